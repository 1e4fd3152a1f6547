"""Shared set-up of the preference tests: a synthetic preference set whose gold reward is
known (the share of digits of a completion), its config, and a warm-started model."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rewardlab.config import PreferenceConfig, parse_config


def digits_vs_letters(path: Path, n: int, seed: int = 0) -> Path:
    """A synthetic preference set whose gold reward is known: the share of digits in the
    completion (tests/dense_rewards.py:digit_fraction). Chosen: digits; rejected: letters."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            chosen = "".join(rng.choice("0123456789") for _ in range(5))
            rejected = "".join(rng.choice("abcdefghij") for _ in range(5))
            f.write(json.dumps({"prompt": f"q{i}:", "chosen": chosen, "rejected": rejected}) + "\n")
    return path


def preference_config(tmp_path: Path, **overrides: Any) -> PreferenceConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "seed": 1,
        "run_dir": str(tmp_path / "run"),
        "data": {
            "path": str(digits_vs_letters(tmp_path / "train.jsonl", 96)),
            "eval_path": str(digits_vs_letters(tmp_path / "eval.jsonl", 24, seed=1)),
            "heldout_size": 24,
        },
        "rewards": [{"name": "dense_rewards:digit_fraction"}],
        "rollout": {"max_new_tokens": 5},
        "preference": {"losses": [{"name": "dpo"}]},
        "train": {"epochs": 2, "batch_size": 16, "micro_batch_size": 16, "optim": {"lr": 3e-3}},
        "eval": {"every": 0, "pass_k": 1, "batch_size": 64},
        "logging": {"samples": 0},
    }
    for key, value in overrides.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return parse_config(PreferenceConfig, data)


def train_warm_start(folder: Path) -> Path:
    """The tiny model after SFT on completions that are digits half the time and letters the
    other half: preference optimization starts, as usual, from a model that already produces
    both kinds of answer, and must move it toward the preferred one."""
    from rewardlab.config import SFTConfig
    from rewardlab.trainers.sft import train_sft

    rng = random.Random(5)
    with (folder / "sft.jsonl").open("w") as f:
        for i in range(96):
            alphabet = "0123456789" if rng.random() < 0.5 else "abcdefghij"
            f.write(json.dumps({"prompt": f"q{i}:", "completion": "".join(rng.choice(alphabet) for _ in range(5))}) + "\n")
    sft = train_sft(parse_config(SFTConfig, {
        "seed": 1, "run_dir": str(folder / "sft"), "data": {"path": str(folder / "sft.jsonl")},
        "train": {"epochs": 4, "batch_size": 16, "optim": {"lr": 3e-3}}, "logging": {"samples": 0},
    }))
    return sft.run_dir / "final"
