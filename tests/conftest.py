"""Test-wide settings: no hub access, one thread per worker, deterministic."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
# Two xdist workers share the machine's cores: one thread each (and in the runs they start),
# or OpenMP's spinning threads oversubscribe the cores and a 100 s test takes 10 minutes.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

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


# The suite runs on two xdist workers (pyproject: -n 2 --dist loadgroup). Each test file stays
# on one worker, so a module's expensive fixture (the SmolLM2 conversion, a Ray cluster) is
# built once; the Ray files share one group because a test there counts the machine's Ray
# processes and must not see another worker's cluster.
_SHARED_GROUPS = {"test_ray": "ray", "test_ray_cluster": "ray"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            stem = item.path.stem
            item.add_marker(pytest.mark.xdist_group(_SHARED_GROUPS.get(stem, stem)))
