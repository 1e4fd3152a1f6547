"""Test-wide settings: no hub access, few threads, deterministic."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import tempfile

# Built-in models are written to a cache; tests use their own so a user's ~/.cache is untouched.
os.environ.setdefault("REWARDLAB_CACHE", tempfile.mkdtemp(prefix="rewardlab-test-cache-"))
