"""Learning-rate schedules: warm-up, then constant, linear or cosine decay to 0."""

from __future__ import annotations

import math

import pytest
import torch

from rewardlab.config import OptimConfig
from rewardlab.trainers.common import make_scheduler


def _lrs(schedule: str, warmup: int, total: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = make_scheduler(optimizer, OptimConfig(lr=1.0, warmup_steps=warmup, schedule=schedule), total)
    out = []
    for _ in range(total):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_then_constant() -> None:
    assert _lrs("constant", 3, 6) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_linear_decay_reaches_zero_at_the_last_step() -> None:
    # after 2 warm-up steps, progress (s - 2) / 4 over steps 2..5
    assert _lrs("linear", 2, 6) == pytest.approx([1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25])


def test_cosine_is_half_way_at_mid_point() -> None:
    lrs = _lrs("cosine", 0, 5)
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 5)) for s in range(5)])
    assert lrs[0] == 1.0 and lrs[2] == pytest.approx(0.5 * (1 + math.cos(0.4 * math.pi)))
