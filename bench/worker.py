"""One benchmark measurement in its own process: ``python bench/worker.py LIB CASE STEPS OUT``.

LIB is ``rewardlab`` or ``trl``; CASE names the work (see ``CASES``). Both libraries get the
same model weights and tokenizer, the same prompts, the same number of completions and new
tokens per step, the same optimizer and learning rate, float32 on the CPU. The worker records
the wall-clock time at the end of every optimizer step, the completion tokens generated, and
the process's peak resident memory, and writes them as JSON to OUT.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LR = 1e-4
SEED = 0


@dataclass(frozen=True)
class Case:
    kind: str  # grpo | dpo | rm
    model: str  # a rewardlab model name
    prompts_per_step: int = 2
    generations: int = 4
    new_tokens: int = 32
    beta: float = 0.0  # GRPO: KL coefficient (0: no reference model); DPO: beta
    batch: int = 8  # DPO, RM: pairs per step
    max_length: int = 128  # DPO, RM
    checkpointing: bool = False  # activation checkpointing in both libraries (TRL's CPU default)


CASES: dict[str, Case] = {
    "grpo-tiny": Case("grpo", "builtin:tiny"),
    "grpo-tiny-kl": Case("grpo", "builtin:tiny", beta=0.04),
    "grpo-smollm2": Case("grpo", "smollm2-135m", prompts_per_step=1, generations=8),
    "dpo-tiny": Case("dpo", "builtin:tiny", beta=0.1),
    "dpo-smollm2": Case("dpo", "smollm2-135m", beta=0.1),
    "rm-tiny": Case("rm", "builtin:tiny"),
    "dpo-smollm2-ckpt": Case("dpo", "smollm2-135m", beta=0.1, checkpointing=True),
    "grpo-smollm2-ckpt": Case("grpo", "smollm2-135m", prompts_per_step=1, generations=8, checkpointing=True),
}


@dataclass
class Measurement:
    lib: str
    case: str
    step_ends: list[float] = field(default_factory=list)  # perf_counter at each step's end
    completion_tokens: list[int] = field(default_factory=list)  # generated per step (GRPO)
    peak_rss_mb: float = 0.0
    started: float = 0.0


def model_folder(name: str) -> str:
    from rewardlab.models.loading import resolve_model_path

    return resolve_model_path(name, seed=SEED)


def prompts(n: int) -> list[str]:
    """Deterministic arithmetic prompts, the same for both libraries."""
    from rewardlab.data.tasks import make_task

    task = make_task("arithmetic", {"digits": 2, "ops": "+"})
    return [task.train_problem(i, seed=SEED).prompt for i in range(n)]


def digit_reward(completions: list[str]) -> list[float]:
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def pairs(n: int) -> list[dict[str, str]]:
    """Synthetic preference pairs: digits preferred to letters, 5 to 40 characters long."""
    import random

    rng = random.Random(SEED)
    out = []
    for i, prompt in enumerate(prompts(n)):
        length = 5 + (i * 7) % 36
        chosen = "".join(rng.choice("0123456789") for _ in range(length))
        rejected = "".join(rng.choice("abcdefghij") for _ in range(length))
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


# --------------------------------------------------------------------------- rewardlab


def _model(case: Case) -> dict[str, Any]:
    return {"name": model_folder(case.model), "gradient_checkpointing": case.checkpointing}


def run_rewardlab(case: Case, steps: int, out: Measurement, work: Path) -> None:
    {"grpo": _rewardlab_grpo, "dpo": _rewardlab_dpo, "rm": _rewardlab_rm}[case.kind](case, steps, out, work)


def _rewardlab_grpo(case: Case, steps: int, out: Measurement, work: Path) -> None:
    from rewardlab.config import RunConfig, parse_config
    from rewardlab.trainers.online import train

    prompt_file = work / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(case.prompts_per_step * steps)))
    config = parse_config(RunConfig, {
        "seed": SEED, "run_dir": str(work / "run"), "model": _model(case),
        "data": {"path": str(prompt_file), "heldout_size": 1},
        "rewards": [{"name": "bench_rewards:digit_share"}],
        "algorithm": {"recipe": "grpo", "kl": {"coef": case.beta}},
        "rollout": {"num_generations": case.generations, "max_new_tokens": case.new_tokens, "temperature": 1.0},
        "train": {"steps": steps, "prompts_per_step": case.prompts_per_step, "micro_batch_size": 64,
                  "optim": {"lr": LR, "warmup_steps": 0}},
        "eval": {"every": 0, "pass_k": 1, "num_samples": 1},
        "checkpoint": {"every": 0}, "logging": {"samples": 0},
    })

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if "time/step" in metrics:
            out.step_ends.append(time.perf_counter())
            out.completion_tokens.append(round(metrics.get("completion_length", 0) * case.prompts_per_step * case.generations))

    out.started = time.perf_counter()
    train(config, on_step=on_step)


def _rewardlab_dpo(case: Case, steps: int, out: Measurement, work: Path) -> None:
    from rewardlab.config import PreferenceConfig, parse_config
    from rewardlab.trainers.preference import train_preference

    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs(case.batch * steps)))
    config = parse_config(PreferenceConfig, {
        "seed": SEED, "run_dir": str(work / "run"), "model": _model(case),
        "data": {"path": str(data), "heldout_size": 1},
        "rewards": [{"name": "bench_rewards:digit_share"}],
        "preference": {"losses": [{"name": "dpo", "params": {"beta": case.beta}}]},
        "train": {"epochs": 1, "batch_size": case.batch, "micro_batch_size": case.batch,
                  "optim": {"lr": LR, "warmup_steps": 0}},
        "eval": {"every": 0, "pass_k": 1, "num_samples": 1},
        "rollout": {"max_new_tokens": 1},
        "checkpoint": {"every": 0}, "logging": {"samples": 0},
    })

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if "loss" in metrics:
            out.step_ends.append(time.perf_counter())

    out.started = time.perf_counter()
    train_preference(config, on_step=on_step)


def _rewardlab_rm(case: Case, steps: int, out: Measurement, work: Path) -> None:
    """A Bradley-Terry reward model (``rewardlab rm train``): the backbone with a scalar head on
    the last real token, the same pairs and optimizer as TRL's ``RewardTrainer`` below."""
    from rewardlab.config import parse_config
    from rewardlab.reward_models.config import RewardModelConfig
    from rewardlab.reward_models.trainer import train_reward_model

    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs(case.batch * steps)))
    config = parse_config(RewardModelConfig, {
        "seed": SEED, "run_dir": str(work / "run"),
        "model": {"name": model_folder(case.model), "max_length": case.max_length},
        "data": {"path": str(data), "heldout_size": 1},
        "train": {"epochs": 1, "batch_size": case.batch, "micro_batch_size": case.batch,
                  "optim": {"lr": LR, "warmup_steps": 0}},
    })

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if "loss" in metrics:
            out.step_ends.append(time.perf_counter())

    out.started = time.perf_counter()
    train_reward_model(config, on_step=on_step)


# --------------------------------------------------------------------------- TRL


def run_trl(case: Case, steps: int, out: Measurement, work: Path) -> None:
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            out.step_ends.append(time.perf_counter())

    {"grpo": _trl_grpo, "dpo": _trl_dpo, "rm": _trl_rm}[case.kind](case, steps, out, work, StepTimes())


def _common_args(case: Case, steps: int, work: Path) -> dict[str, Any]:
    # TRL's CPU defaults turn on bf16 and gradient checkpointing; bf16 is switched off so that
    # the two libraries do the same float32 work, and checkpointing is what the case says
    # (off: no recomputation; the *-ckpt cases: on in both).
    return {
        "output_dir": str(work / "trl"), "use_cpu": True, "bf16": False, "gradient_checkpointing": case.checkpointing,
        "max_steps": steps, "learning_rate": LR, "lr_scheduler_type": "constant", "warmup_steps": 0,
        "logging_steps": 1, "save_strategy": "no", "report_to": [], "seed": SEED,
        "dataloader_num_workers": 0, "disable_tqdm": True,
    }


def _trl_grpo(case: Case, steps: int, out: Measurement, work: Path, callback: Any) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    size = case.prompts_per_step * case.generations
    args = GRPOConfig(
        **_common_args(case, steps, work),
        per_device_train_batch_size=size, num_generations=case.generations,
        max_completion_length=case.new_tokens, beta=case.beta, temperature=1.0,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
    )
    dataset = Dataset.from_list([{"prompt": p} for p in prompts(case.prompts_per_step * steps)])
    tokens = out.completion_tokens

    def reward(completions: list[str], completion_ids: list[list[int]] | None = None, **_: Any) -> list[float]:
        tokens.append(sum(len(ids) for ids in completion_ids) if completion_ids else 0)
        return digit_reward(completions)

    trainer = GRPOTrainer(model=model_folder(case.model), reward_funcs=reward, args=args, train_dataset=dataset)
    trainer.add_callback(callback)
    out.started = time.perf_counter()
    trainer.train()


def _trl_dpo(case: Case, steps: int, out: Measurement, work: Path, callback: Any) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        **_common_args(case, steps, work),
        per_device_train_batch_size=case.batch, gradient_accumulation_steps=1,
        beta=case.beta, max_length=case.max_length,
    )
    dataset = Dataset.from_list(pairs(case.batch * steps))
    trainer = DPOTrainer(model=model_folder(case.model), args=args, train_dataset=dataset)
    trainer.add_callback(callback)
    out.started = time.perf_counter()
    trainer.train()


def _trl_rm(case: Case, steps: int, out: Measurement, work: Path, callback: Any) -> None:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(
        **_common_args(case, steps, work),
        per_device_train_batch_size=case.batch, gradient_accumulation_steps=1, max_length=case.max_length,
    )
    dataset = Dataset.from_list(pairs(case.batch * steps))
    trainer = RewardTrainer(model=model_folder(case.model), args=args, train_dataset=dataset)
    trainer.add_callback(callback)
    out.started = time.perf_counter()
    trainer.train()


# --------------------------------------------------------------------------- main


def main() -> None:
    lib, name, steps, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    import tempfile

    import torch

    torch.manual_seed(SEED)
    case = CASES[name]
    out = Measurement(lib, name)
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory(prefix=f"bench-{lib}-") as tmp:
        (run_rewardlab if lib == "rewardlab" else run_trl)(case, steps, out, Path(tmp))
    out.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    target.write_text(json.dumps(asdict(out)))


if __name__ == "__main__":
    main()
