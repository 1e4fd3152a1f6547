"""Test-wide settings: no hub access, few threads, deterministic."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import tempfile

# Built-in models are written to a cache; tests use their own so a user's ~/.cache is untouched.
os.environ.setdefault("REWARDLAB_CACHE", tempfile.mkdtemp(prefix="rewardlab-test-cache-"))


from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def warm_start(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model after SFT on digits-or-letters completions (tests/preference_setup.py)."""
    from preference_setup import train_warm_start

    return train_warm_start(tmp_path_factory.mktemp("warm"))
