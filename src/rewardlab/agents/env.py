"""The environment interface of agentic RL.

An episode: ``reset(row)`` gives the first observation (the user's message); the policy
answers with one turn of text; ``step(action)`` gives the next observation, that turn's
reward, whether the episode ended, and an info dict. The rollout stops an episode after
``agent.max_turns`` turns whatever the environment says.

One environment object plays one episode at a time; the rollout builds one per episode with
the registered factory, so environments may keep plain Python state. Environments must be
deterministic given the row (and the actions): GiGPO groups turns by identical states, and a
resumed run must replay the same episodes.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rewardlab.data.tasks.base import Task

Row = dict[str, Any]


@dataclass
class StepResult:
    """What the environment answers to one turn.

    ``observation`` is shown to the policy as the next message (empty when ``done``), in the
    chat role ``role``: ``"tool"`` for a tool's result, ``"user"`` for feedback from the world.
    ``info`` may hold ``success`` (bool, read at the end of an episode), ``valid`` (bool: the
    action could be executed, the grounding signal of SPA-RL) and anything worth logging.
    """

    observation: str
    reward: float
    done: bool
    role: str = "user"
    info: dict[str, Any] = field(default_factory=dict)


class Environment(ABC):
    """One episode's world. Subclasses set ``name`` and implement ``reset`` and ``step``."""

    name: str = "environment"

    @abstractmethod
    def reset(self, row: Row) -> str:
        """Start an episode for a data row; returns the first user message."""

    @abstractmethod
    def step(self, action: str) -> StepResult:
        """Apply the policy's turn (its text, special tokens removed)."""

    def state_key(self) -> str:
        """An identifier of the current state: turns taken from equal keys are GiGPO's anchor
        group. Default: the text of the last observation, which is right when the observation
        shows the whole state (the gridworld); override when it does not."""
        raise NotImplementedError(f"{type(self).__name__} does not define state_key")

    def expert_action(self) -> str:
        """A good next action in the current state, for SFT warm-start demonstrations."""
        raise NotImplementedError(f"{type(self).__name__} has no expert")

    def random_action(self, rng: random.Random) -> str:
        """An action drawn at random among the sensible ones in the current state, for
        imperfect demonstrations (``agent.demo_noise``): what a careless demonstrator does."""
        raise NotImplementedError(f"{type(self).__name__} has no random_action")

    def answer_text(self) -> str | None:
        """The text of a correct final turn, if the episode has one (IGPO's information gain
        is the rise in its probability); None when success is not one answer (a walk)."""
        return None


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment: how to build one, and the task that makes its rows (prompt
    plus the columns ``reset`` reads), so ``data.task: <name>`` gives an agent run its data."""

    name: str
    factory: Callable[..., Environment]
    task: type[Task]
    description: str


ENVIRONMENTS: dict[str, EnvSpec] = {}


def register_environment(spec: EnvSpec) -> EnvSpec:
    ENVIRONMENTS[spec.name] = spec
    return spec
