"""Scale-out on Ray (``engine: ray``): rollout workers as actors, data-parallel learners over
torch.distributed, and the cluster they run on. Imported only by Ray runs, so ``ray`` stays an
optional dependency (``pip install 'rewardlab[ray]'``)."""
