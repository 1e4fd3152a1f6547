"""``engine: ray`` on a local 2-CPU Ray cluster: the same metrics as a local run, data-parallel
learners equal to one learner, a killed rollout worker or learner, and the asynchronous mode's
staleness bound.

One Ray cluster serves the whole module (a run joins a cluster that is already up and leaves
it running), so the tests pay its start-up once.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from rewardlab.config import RunConfig
from rewardlab.distributed.cluster import restore_signals, saved_signals
from rewardlab.errors import RewardlabError
from rewardlab.trainers.online import train

ray = pytest.importorskip("ray")

STEPS = 4
BASE: dict[str, Any] = {
    "data": {"task": "arithmetic"},
    "rewards": [{"name": "dense_rewards:digit_fraction"}],  # dense: every step has something to learn
    "rollout": {"num_generations": 4, "max_new_tokens": 8},
    "train": {"steps": STEPS, "prompts_per_step": 4, "micro_batch_size": 4, "optim": {"lr": 3e-3}},
    "eval": {"every": 2},
    "checkpoint": {"every": 2},
}
RAY = {"cpus_per_worker": 0.5, "torch_threads": 1, "collective_timeout": 60}


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    # The tests' own reward module must import on the workers too (docs/ray.md: your reward
    # modules are installed on, or shipped to, every node).
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}}
    handlers = saved_signals()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    yield
    ray.shutdown()
    restore_signals(handlers)  # ray.init's SIGTERM handler would outlive the module


def _config(run_dir: Path, **changes: Any) -> RunConfig:
    raw = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    raw["run_dir"] = str(run_dir)
    return RunConfig.model_validate(raw)


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same_metrics(local: list[dict[str, float]], other: list[dict[str, float]], tol: float = 1e-5) -> None:
    """Every metric of the local run, step by step, within float tolerance (the Ray run logs
    some of its own besides: ``ray/*``, staleness)."""
    assert [m["step"] for m in local] == [m["step"] for m in other]
    for a, b in zip(local, other, strict=True):
        keys = [k for k in a if not k.startswith("time/")]
        assert len(keys) > (5 if a["step"] > 0 else 3)
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=tol, abs=tol), (a["step"], key)


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def _kill_actor(kind: str) -> int:
    """SIGKILL one live process of a Ray actor class (its process title is ray::<Class>)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(f"ray::{kind}"):
            os.kill(int(entry.name), signal.SIGKILL)
            return int(entry.name)
    raise AssertionError(f"no {kind} process found")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: a local run with per-prompt seeding (what a Ray run always does)."""
    run_dir = tmp_path_factory.mktemp("local") / "run"
    train(_config(run_dir, rollout={"seeding": "per_prompt"}))
    metrics = [m for m in _metrics(run_dir) if m["step"] > 0]
    assert all(m["reward/std"] > 0 and m["grad_norm"] > 0 for m in metrics)  # the comparisons mean something
    return run_dir


def test_per_prompt_seeding_does_not_depend_on_the_batch_split() -> None:
    from rewardlab.config import ModelConfig
    from rewardlab.models.loading import load_policy
    from rewardlab.rollout.hf import SamplingParams
    from rewardlab.rollout.seeded import generate_seeded

    policy, tok = load_policy(ModelConfig(), seed=0)
    prompts = ["12+3=", "what is 5*7? ", "a", "reverse: hello world"]  # different lengths: padding differs
    params = SamplingParams(n=3, temperature=0.8, top_p=0.9, max_new_tokens=10, logprobs=True)
    whole = generate_seeded(policy, tok, prompts, params, [11, 22, 33, 44])
    first = generate_seeded(policy, tok, prompts[:1], params, [11])
    rest = generate_seeded(policy, tok, prompts[1:], params, [22, 33, 44])
    assert tok.batch_decode(whole.completion_ids) == tok.batch_decode(first.completion_ids) + tok.batch_decode(
        rest.completion_ids
    )
    width = first.completion_ids.shape[1]
    assert torch.allclose(whole.sampling_logp[:3, :width], first.sampling_logp, atol=1e-5)
    other = generate_seeded(policy, tok, prompts, params, [12, 22, 33, 44])
    assert tok.batch_decode(other.completion_ids[:3]) != tok.batch_decode(whole.completion_ids[:3])


def test_per_prompt_sampling_draws_from_the_model_distribution() -> None:
    """The Gumbel-max draw of the first token matches softmax(logits / T) over many seeds."""
    from rewardlab.config import ModelConfig
    from rewardlab.models.loading import load_policy
    from rewardlab.rollout.hf import SamplingParams, tokenize_prompts
    from rewardlab.rollout.seeded import generate_seeded

    policy, tok = load_policy(ModelConfig(), seed=0)
    ids, mask = tokenize_prompts(tok, ["1+1="])
    with torch.no_grad():
        logits = policy(input_ids=ids, attention_mask=mask).logits[0, -1]
    probs = torch.softmax(logits / 0.5, -1)
    params = SamplingParams(n=500, temperature=0.5, max_new_tokens=1)
    batch = generate_seeded(policy, tok, ["1+1="], params, [7])
    counts = torch.bincount(batch.completion_ids[:, 0], minlength=probs.numel()).float() / 500
    top = torch.topk(probs, 3).indices
    for token in top:  # binomial sd at n=500 is at most 0.023
        assert abs(float(counts[token]) - float(probs[token])) < 0.07


def test_sync_ray_run_matches_the_local_run_even_when_a_rollout_worker_is_killed(
    tmp_path: Path, local_run: Path
) -> None:
    """2 rollout workers, 1 learner: the local run's metrics and final weights. One worker is
    killed (SIGKILL) after step 1: it is replaced, its shard generated again with the same
    seeds, and nothing of the run changes."""
    run_dir = tmp_path / "ray"
    killed: list[int] = []

    def kill_once(step: int, metrics: dict[str, float]) -> None:
        if step == 1 and not killed:
            killed.append(_kill_actor("RolloutWorker"))

    train(_config(run_dir, engine="ray", ray={**RAY, "rollout_workers": 2}), on_step=kill_once)
    assert killed
    metrics = _metrics(run_dir)
    _same_metrics(_metrics(local_run), metrics)
    assert max(m.get("ray/worker_restarts", 0) for m in metrics) == 1
    assert all(m["rollout/staleness_max"] == 0 for m in metrics if m["step"] > 0)
    assert (run_dir / "checkpoints").is_dir() and (run_dir / "final").is_dir()
    for name, value in _final_weights(local_run).items():
        assert torch.allclose(_final_weights(run_dir)[name], value, atol=1e-5), name


def test_lora_weights_reach_the_rollout_workers(tmp_path: Path) -> None:
    """Under LoRA only the adapter is sent after each update; the workers' samples then equal
    a local run's (a worker left on the initial adapter would sample differently at step 2)."""
    lora = {"name": "builtin:tiny", "lora": {"r": 4, "alpha": 8}}
    local = tmp_path / "local"
    train(_config(local, model=lora, rollout={"seeding": "per_prompt"}, train={"steps": 3}))
    remote = tmp_path / "remote"
    train(_config(remote, model=lora, engine="ray", train={"steps": 3}, ray={**RAY, "rollout_workers": 2}))
    _same_metrics(_metrics(local), _metrics(remote))


def test_ray_run_resumes_exactly_with_another_worker_count(tmp_path: Path, local_run: Path) -> None:
    """Stopped after 2 of 4 steps, resumed with 1 rollout worker instead of 2: the metrics of
    the uninterrupted local run (the checkpoint's weights reach the new workers)."""
    run_dir = tmp_path / "resumed"
    train(_config(run_dir, engine="ray", train={"steps": 2}, ray={**RAY, "rollout_workers": 2}))
    train(_config(run_dir, engine="ray", ray={**RAY, "rollout_workers": 1}), resume=run_dir)
    _same_metrics(_metrics(local_run), _metrics(run_dir))


def test_data_parallel_update_sums_the_shares() -> None:
    """Direct check of the update split: each of 2 ranks computes half of a mini-batch, and
    their summed gradient is the one-learner gradient (ranks simulated in one process by
    replacing the collective with the sum it computes)."""
    from rewardlab.distributed.parallel import DataParallel

    group = torch.arange(8).repeat_interleave(2)
    shares = [DataParallel(r, 2).share(group, whole_groups=True) for r in range(2)]
    assert torch.equal(torch.cat(shares), torch.arange(16))
    assert set(group[shares[0]].tolist()).isdisjoint(group[shares[1]].tolist())
    three = [DataParallel(r, 3).share(torch.arange(2).repeat_interleave(4), whole_groups=True) for r in range(3)]
    assert [len(s) for s in three] == [4, 4, 0]  # two groups cannot feed three ranks; the third idles


def test_two_data_parallel_learners_equal_one_and_survive_a_killed_learner(tmp_path: Path, local_run: Path) -> None:
    """The update split over 2 learners (the trainer and one actor) gives the losses, gradient
    norms and final weights of one learner. The actor is killed (SIGKILL) after step 3: the
    run resumes from the step-2 checkpoint with a fresh learner and still ends equal."""
    run_dir = tmp_path / "learner"
    killed: list[int] = []

    def kill_once(step: int, metrics: dict[str, float]) -> None:
        if step == 3 and not killed:  # the checkpoint of step 2 is the last one
            killed.append(_kill_actor("LearnerWorker"))

    result = train(_config(run_dir, engine="ray", ray={**RAY, "rollout_workers": 1, "learners": 2}), on_step=kill_once)
    assert killed and result.learner_restarts == 1
    _same_metrics(_metrics(local_run), _metrics(run_dir))
    for name, value in _final_weights(local_run).items():
        assert torch.allclose(_final_weights(run_dir)[name], value, atol=1e-5), name


def test_async_mode_respects_the_staleness_bound(tmp_path: Path) -> None:
    run_dir = tmp_path / "async"
    config = _config(
        run_dir,
        engine="ray",
        train={"steps": 6},
        ray={**RAY, "rollout_workers": 2, "mode": "async", "max_staleness": 2},
    )
    assert config.algorithm.correction is not None and config.algorithm.correction.name == "tis"
    train(config)
    metrics = [m for m in _metrics(run_dir) if m["step"] > 0]
    staleness = [m["rollout/staleness_max"] for m in metrics]
    assert max(staleness) == 2  # the bound is used ...
    assert all(s <= 2 for s in staleness)  # ... and never exceeded
    assert staleness[0] == 0 and staleness[1] == 1  # the pipeline fills one step at a time
    # Stale samples get importance weights that differ from 1 (the policy moved since).
    assert any(abs(m["correction/raw_weight"] - 1.0) > 1e-4 for m in metrics if m["rollout/staleness_max"] > 0)


def test_reward_workers_score_what_the_trainer_would(tmp_path: Path) -> None:
    """A stateless reward scored on a reward worker (chained on generation) and a stateful one
    (the n-gram novelty bonus, which remembers generations) kept in the trainer: the same
    metrics as a local run that scores both itself."""
    rewards = [{"name": "dense_rewards:digit_fraction"}, {"name": "novelty_ngram", "weight": 0.2}]
    local = tmp_path / "local"
    train(_config(local, rewards=rewards, rollout={"seeding": "per_prompt"}, train={"steps": 2}))
    remote = tmp_path / "remote"
    config = _config(remote, rewards=rewards, engine="ray", train={"steps": 2},
                     ray={**RAY, "rollout_workers": 2, "reward_workers": 1})
    from rewardlab.data.prompts import prompt_source
    from rewardlab.distributed.rewards import is_remote_capable
    from rewardlab.models.loading import load_policy
    from rewardlab.rewards import build_reward_sources

    _, tok = load_policy(config.model)
    sources = build_reward_sources(config.rewards, prompt_source(config.data, tok, 0, []).task)
    assert [is_remote_capable(s) for s in sources] == [True, False]
    train(config)
    _same_metrics(_metrics(local), _metrics(remote))
    assert any(m.get("reward/novelty_ngram", 0) > 0 for m in _metrics(remote))


def test_a_reward_error_on_a_reward_worker_is_the_same_clear_message(tmp_path: Path) -> None:
    config = _config(tmp_path / "bad", rewards=[{"name": "dense_rewards:raises_on_digits"}], engine="ray",
                     ray={**RAY, "rollout_workers": 1, "reward_workers": 1})
    with pytest.raises(RewardlabError, match="raises_on_digits") as caught:
        train(config)
    assert "Traceback" not in str(caught.value) and "RayTaskError" not in str(caught.value)


def test_impossible_placement_is_one_clear_error(tmp_path: Path) -> None:
    config = _config(tmp_path / "big", engine="ray", ray={"rollout_workers": 3, "cpus_per_worker": 1.0})
    with pytest.raises(RewardlabError, match="cpus_per_worker"):
        train(config)
