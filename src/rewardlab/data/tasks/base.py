"""What every built-in task provides: deterministic train and held-out problems."""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rewardlab.errors import DataError

if TYPE_CHECKING:
    # Type-only: importing rewardlab.rewards at runtime would import this module back.
    from rewardlab.rewards.builtin import RewardFn


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str

    def row(self) -> dict[str, str]:
        """As a prompt row: the prompt and the reference answer (the verifier's column)."""
        return {"prompt": self.prompt, "answer": self.answer}

    def demonstration(self) -> dict[str, str]:
        """As an SFT pair: the prompt and the reference answer as the completion to learn."""
        return {"prompt": self.prompt, "completion": self.answer}


class Task(ABC):
    """A problem generator with a fixed split of its problem space.

    About 1 in ``heldout_every`` problems (chosen by a hash of the prompt, so the same for
    every seed) is held out: it never appears in training streams, only in evaluation.
    """

    name: str = "task"
    heldout_every: int = 10

    @abstractmethod
    def sample(self, rng: random.Random) -> Problem:
        """Draw one problem."""

    def reward_fn(self) -> RewardFn:
        """The task's verifier, used by the ``task`` reward: 1.0 when the stripped completion
        equals the row's ``answer`` column, else 0.0.

        Override in a task whose answers have more than one correct spelling.
        """

        def verify(
            prompts: list[str], completions: list[str], **columns: Any
        ) -> list[float | None]:
            if "answer" not in columns:
                raise DataError(
                    f"the '{self.name}' task's reward reads column 'answer', but the batch has "
                    f"none (columns: {', '.join(sorted(columns)) or 'none'})"
                )
            return [
                1.0 if completion.strip() == answer else 0.0
                for completion, answer in zip(completions, columns["answer"], strict=True)
            ]

        verify.__name__ = f"{self.name}_verifier"
        return verify

    def is_heldout(self, problem: Problem) -> bool:
        digest = hashlib.sha256(problem.prompt.encode()).digest()
        return int.from_bytes(digest[:4], "little") % self.heldout_every == 0

    def train_problem(self, index: int, *, seed: int, stream: str = "rl") -> Problem:
        """The ``index``-th training problem of a stream: a pure function of its arguments,
        so a resumed run only needs to remember ``index``."""
        rng = random.Random(f"{self.name}/{stream}/{seed}/{index}")
        while True:
            problem = self.sample(rng)
            if not self.is_heldout(problem):
                return problem

    def heldout(self, n: int, *, seed: int) -> list[Problem]:
        """``n`` distinct held-out problems (fewer only if the held-out space is smaller)."""
        rng = random.Random(f"{self.name}/heldout/{seed}")
        seen: dict[str, Problem] = {}
        for _ in range(200 * n):
            problem = self.sample(rng)
            if self.is_heldout(problem) and problem.prompt not in seen:
                seen[problem.prompt] = problem
                if len(seen) == n:
                    break
        return list(seen.values())
