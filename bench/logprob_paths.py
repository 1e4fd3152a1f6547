"""Peak memory and time of one training forward + backward through the two log-prob paths.

    python bench/logprob_paths.py [--model smollm2-135m] [--rows 16] [--prompt 30] [--width 40]

Each path (``plain``: full [B, T, V] logits through ``token_logprobs`` / ``token_entropy``;
``chunked``: ``completion_logprobs``) runs in its own process, so that each process's peak
resident memory is its own. The batch is random token ids of the given shape (left-padded
prompts of varied length, right-padded completions); the loss weights log-probs and entropy
as a policy loss with an entropy bonus does.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def one(path: str, model_name: str, rows: int, prompt: int, width: int) -> dict[str, float]:
    import torch

    sys.path.insert(0, str(HERE))
    import worker

    from rewardlab.batch import RolloutBatch
    from rewardlab.config import ModelConfig
    from rewardlab.models import logprobs as lp
    from rewardlab.models.loading import load_policy

    model, _ = load_policy(ModelConfig(name=worker.model_folder(model_name)), seed=0)
    model.train()
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt_ids = torch.randint(3, vocab, (rows, prompt), generator=gen)
    completion_ids = torch.randint(3, vocab, (rows, width), generator=gen)
    lengths = torch.randint(prompt // 3, prompt + 1, (rows,), generator=gen)
    prompt_mask = (torch.arange(prompt)[None, :] >= prompt - lengths[:, None]).long()
    ends = torch.randint(width // 4, width + 1, (rows,), generator=gen)
    completion_mask = (torch.arange(width)[None, :] < ends[:, None]).long()
    batch = RolloutBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.arange(rows), ends == width)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(3):
        started = time.perf_counter()
        if path == "plain":
            logits = lp.forward_completion_logits(model, batch, 0.7)
            logp, ent = lp.token_logprobs(logits, batch.completion_ids), lp.token_entropy(logits)
            del logits
        else:
            logp, ent = lp.completion_logprobs(model, batch, 0.7, entropy=True)
        mask = batch.completion_mask.float()
        loss = ((logp - 0.01 * ent) * mask).sum() / mask.sum()
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"loaded_mb": loaded, "peak_mb": peak, "step_s": min(times)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=30)
    parser.add_argument("--width", type=int, default=40)
    parser.add_argument("--path", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.path:
        print(json.dumps(one(args.path, args.model, args.rows, args.prompt, args.width)))
        return
    for path in ("plain", "chunked"):
        cmd = [sys.executable, __file__, "--path", path, "--model", args.model, "--rows", str(args.rows),
               "--prompt", str(args.prompt), "--width", str(args.width)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{path:8s} peak {r['peak_mb']:6.0f} MB (after load {r['loaded_mb']:5.0f} MB, "
              f"step rise {r['peak_mb'] - r['loaded_mb']:5.0f} MB)  forward+backward {r['step_s']:.3f} s (best of 3)")


if __name__ == "__main__":
    main()
