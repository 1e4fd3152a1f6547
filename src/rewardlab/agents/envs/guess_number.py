"""``guess_number``: find a secret integer in 1..high from "higher" / "lower" feedback.

Every prompt is the same ("Guess my number, 1-16."), so what tells problems apart is the
secret, which only the row's ``answer`` column holds: compact JSON ``{"secret": 5, "high": 16}``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import TYPE_CHECKING, Any, NoReturn

from rewardlab.agents.env import Environment, EnvSpec, Row, StepResult, register_environment
from rewardlab.data.tasks.base import Problem, Task
from rewardlab.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rewardlab.rewards.builtin import RewardFn

NAME = "guess_number"
MAX_HIGH = 10**6
DEFAULT_HIGH = 16
HIGHER, LOWER = "higher", "lower"
_INTEGER = re.compile(r"-?\d+")


def prompt_for(high: int) -> str:
    return f"Guess my number, 1-{high}."


def worst_case_turns(high: int) -> int:
    """Binary search over ``high`` numbers needs at most floor(log2(high)) + 1 guesses."""
    return high.bit_length()


def _no_text_verifier(name: str) -> NoReturn:
    """Environment tasks have no text verifier: the reward is earned by acting in the
    environment, so asking for one is a config mistake worth a clear message."""
    raise ConfigError(
        f"task '{name}' is an environment: train it with an `agent:` section "
        "(its reward comes from the environment)"
    )


class GuessNumberTask(Task):
    """A uniform secret in 1..``high``.

    The base split hashes the prompt, which is the same for every problem here; the split is
    instead over secrets: the ``high // heldout_every`` secrets (at least one) with the
    smallest hashes are held out, so training and evaluation episodes never share a secret.
    """

    name = NAME
    max_turns_hint = worst_case_turns(DEFAULT_HIGH)

    def __init__(self, high: int = DEFAULT_HIGH, holdout: bool = False) -> None:
        if isinstance(high, bool) or not isinstance(high, int) or not 2 <= high <= MAX_HIGH:
            raise ValueError(
                f"guess_number: high must be a whole number in 2..{MAX_HIGH}, got {high!r}"
            )
        self.high = high
        self.max_turns_hint = worst_case_turns(high)
        by_hash = sorted(
            range(1, high + 1),
            key=lambda s: hashlib.sha256(f"{NAME}/{high}/{s}".encode()).digest(),
        )
        # Without holdout the game is its whole problem space: training plays every secret and
        # evaluation plays each once. A held-out secret's last guess is never demonstrated, so
        # holding secrets out measures discovery, not play.
        self.holdout = holdout
        self._heldout = frozenset(by_hash[: max(1, high // self.heldout_every)] if holdout else ())

    def _problem(self, secret: int) -> Problem:
        answer = json.dumps({"secret": secret, "high": self.high}, separators=(",", ":"))
        return Problem(prompt_for(self.high), answer)

    def sample(self, rng: random.Random) -> Problem:
        return self._problem(rng.randint(1, self.high))

    def is_heldout(self, problem: Problem) -> bool:
        return _parse_answer(problem.answer)[0] in self._heldout

    def heldout(self, n: int, *, seed: int) -> list[Problem]:
        """``n`` distinct held-out rows (without ``holdout``: every secret); the base version
        dedupes by prompt, which would keep only one row here."""
        secrets = sorted(self._heldout or range(1, self.high + 1))
        random.Random(f"{NAME}/heldout/{seed}").shuffle(secrets)
        return [self._problem(s) for s in secrets[:n]]

    def reward_fn(self) -> RewardFn:
        _no_text_verifier(self.name)


def _parse_answer(raw: Any) -> tuple[int, int]:
    """(secret, high) from a row's ``answer``, or a ``DataError`` naming the field."""
    try:
        answer = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        answer = None
    fields = [answer.get(k) for k in ("secret", "high")] if isinstance(answer, dict) else []
    if len(fields) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in fields):
        raise DataError(
            f"env '{NAME}': row field 'answer' must be JSON like "
            f'{{"secret":5,"high":16}}, got {raw!r}'
        )
    secret, high = fields
    if not 1 <= secret <= high:
        raise DataError(f"env '{NAME}': row field 'answer': secret {secret} is not in 1..{high}")
    return secret, high


class GuessNumberEnv(Environment):
    """One secret; each turn is a guess answered "higher" or "lower" until it is found."""

    name = NAME
    max_turns_hint = worst_case_turns(DEFAULT_HIGH)

    def __init__(self) -> None:
        self._secret, self._high = 0, 0
        self._history: list[tuple[int, str]] = []
        self._done = False

    def reset(self, row: Row) -> str:
        self._secret, self._high = _parse_answer(row.get("answer"))
        # The bound of this row's range, for callers that size max_turns per episode.
        self.max_turns_hint = worst_case_turns(self._high)
        self._history, self._done = [], False
        return prompt_for(self._high)

    def step(self, action: str) -> StepResult:
        if self._done:
            raise RuntimeError(f"env '{NAME}': step after the episode ended; call reset")
        found = _INTEGER.findall(action)
        if not found:
            return StepResult(
                "say a number", 0.0, False, "user", {"valid": False, "success": False}
            )
        guess = int(found[-1])
        if not 1 <= guess <= self._high:
            feedback = f"1-{self._high} only"
            return StepResult(feedback, 0.0, False, "user", {"valid": False, "success": False})
        if guess == self._secret:
            self._done = True
            return StepResult("", 1.0, True, "user", {"valid": True, "success": True})
        feedback = HIGHER if self._secret > guess else LOWER
        self._history.append((guess, feedback))
        return StepResult(feedback, 0.0, False, "user", {"valid": True, "success": False})

    def state_key(self) -> str:
        """The range and the valid guesses with their feedback: everything known about the
        secret. Invalid turns are left out because they tell the policy nothing new."""
        return " ".join([f"1-{self._high}", *(f"{g}{f[0]}" for g, f in self._history)])

    def _bounds(self) -> tuple[int, int]:
        """The smallest and largest secrets consistent with the feedback so far."""
        lo, hi = 1, self._high
        for guess, feedback in self._history:
            if feedback == HIGHER:
                lo = max(lo, guess + 1)
            else:
                hi = min(hi, guess - 1)
        return lo, hi

    def answer_text(self) -> str:
        return str(self._secret)

    def expert_action(self) -> str:
        """Binary search: the middle of the range still consistent with the feedback."""
        lo, hi = self._bounds()
        return str((lo + hi) // 2)

    def random_action(self, rng: random.Random) -> str:
        """Any guess the feedback so far still allows, not necessarily the middle one."""
        lo, hi = self._bounds()
        return str(rng.randint(lo, hi))


SPEC = register_environment(
    EnvSpec(
        NAME,
        GuessNumberEnv,
        task=GuessNumberTask,
        description="find a secret number in 1..high from higher/lower feedback",
    )
)
