"""Built-in reward functions, each made by a factory that takes the config's ``args``.

A reward function is called as ``fn(prompts, completions, **columns)`` where ``columns`` are
the extra dataset columns (lists aligned with ``prompts``), and returns one score per
completion; ``None`` means the reward does not apply to that row.

``REWARD_FACTORIES`` maps each built-in name to its factory. A factory's keyword parameters
are the reward's args (``rewardlab.rewards.loading`` checks config args against them) and its
docstring says what the reward scores.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rewardlab.errors import ConfigError, DataError

RewardFn = Callable[..., Sequence[float | None]]
RewardFactory = Callable[..., RewardFn]


# --------------------------------------------------------------------------- arg checks


def _check_str(reward: str, arg: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"reward '{reward}': arg '{arg}' must be a non-empty string, got {value!r}")
    return value


def _check_bool(reward: str, arg: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"reward '{reward}': arg '{arg}' must be true or false, got {value!r}")
    return value


def _check_number(reward: str, arg: str, value: Any, *, positive: bool) -> float:
    # bool is an int subclass, but `coef: true` is surely a typo, not 1.0.
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0) or (not positive and value < 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"reward '{reward}': arg '{arg}' must be a number {bound}, got {value!r}")
    return float(value)


def _column(reward: str, columns: Mapping[str, Sequence[Any]], name: str) -> Sequence[Any]:
    """The dataset column a reward compares against, or a DataError naming what exists."""
    if name not in columns:
        have = ", ".join(sorted(columns)) or "none"
        raise DataError(
            f"reward '{reward}' reads column '{name}', but the dataset has no such column "
            f"(columns: {have}); set the reward's arg 'column' or add the column to the data"
        )
    return columns[name]


# --------------------------------------------------------------------------- exact_match


# Edge characters that normalize strips: sentence punctuation, quotes, brackets, markdown
# emphasis. Not signs, '$', '%' or '#', which change what an answer means.
_EDGE_PUNCTUATION = ".,;:!?\"'`*_()[]{}\u201c\u201d\u2018\u2019"
_ANSWER_PREFIX = re.compile(r"^(?:so\s+)?(?:the\s+)?(?:final\s+)?answer(?:\s+is\b\s*:?|\s*:)\s*")


def normalize_answer(text: str) -> str:
    """``exact_match``'s ``normalize``: case-fold, collapse runs of whitespace to one space,
    strip edge punctuation, drop an "answer is" / "answer:" prefix, strip edge punctuation
    again."""
    text = " ".join(text.casefold().split()).strip(_EDGE_PUNCTUATION + " ")
    return _ANSWER_PREFIX.sub("", text).strip(_EDGE_PUNCTUATION + " ")


def exact_match(column: str = "answer", strip: bool = True, normalize: bool = False) -> RewardFn:
    """1.0 when the completion equals the row's ``column`` value (as a string), else 0.0.

    With ``strip`` (default) leading/trailing whitespace is ignored on both sides. With
    ``normalize`` both sides are also, in this order: case-folded; runs of whitespace
    collapsed to one space; stripped of the characters ``. , ; : ! ? " ' ` * _ ( ) [ ] { }``
    and curly quotes at both ends (not signs, ``$``, ``%`` or ``#``); stripped of a leading
    "answer is", "answer:", "the answer is", "the final answer is", "so the answer is" (any
    case, optional colon); and stripped of those edge characters again. So "The answer is:
    **Paris**." matches "paris". Rows whose reference is missing (``None``) score ``None``.
    """
    column = _check_str("exact_match", "column", column)
    strip = _check_bool("exact_match", "strip", strip)
    normalize = _check_bool("exact_match", "normalize", normalize)

    def score(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        references = _column("exact_match", columns, column)
        scores: list[float | None] = []
        for completion, reference in zip(completions, references, strict=True):
            if reference is None:
                scores.append(None)
                continue
            got, want = completion, str(reference)
            if strip:
                got, want = got.strip(), want.strip()
            if normalize:
                got, want = normalize_answer(got), normalize_answer(want)
            scores.append(1.0 if got == want else 0.0)
        return scores

    return score


# --------------------------------------------------------------------------- math_verify


class _RowTimeout(BaseException):
    """Raised by our SIGALRM handler.

    A BaseException on purpose: math-verify and sympy wrap their work in ``except Exception``
    and would otherwise swallow the timeout and carry on with the slow work.
    """


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``_RowTimeout`` in the body after ``seconds`` of wall time (main thread only).

    Signals are delivered to the main thread only, so in any other thread (and when
    ``seconds`` is None) the body runs without a limit. A timer and handler that were set
    before (say by pytest-timeout) are put back afterwards, with the time they had left.
    """
    main = threading.current_thread() is threading.main_thread()
    if seconds is None or not main or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise _RowTimeout

    try:
        previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    except ValueError:  # main thread of a sub-interpreter: signals unavailable
        yield
        return
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        # Nested so that the handler is restored even if the alarm fires right here.
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            # getsignal() gives None for a handler not installed from Python; use the default.
            signal.signal(signal.SIGALRM, previous_handler or signal.SIG_DFL)
            if previous_delay > 0:
                left = previous_delay - (time.monotonic() - started)
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), previous_interval)


class MathVerifyReward:
    """The reward function made by :func:`math_verify` (a class so it can carry counters).

    ``failures`` counts rows that scored 0.0 without a real comparison, by reason:
    ``"timeout"`` (the row took longer than ``timeout_seconds``), ``"gold_unparsed"`` (the
    reference answer could not be parsed: a data problem) and ``"no_answer"`` (nothing
    parseable in the completion). The trainer can log and reset it between steps.
    """

    def __init__(self, column: str, timeout_seconds: float | None) -> None:
        # Imported here: math-verify pulls in sympy, which takes ~1 s and is only needed
        # by runs that use this reward.
        import math_verify

        self._mv = math_verify
        self.column = column
        self.timeout_seconds = timeout_seconds
        self.failures: Counter[str] = Counter()
        self._lock = threading.Lock()  # rewards may be scored from several threads at once
        self.__name__ = "math_verify"

    def _count(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] += 1

    def _parse(self, text: str) -> list[Any]:
        # parsing_timeout=None: math-verify's own timeout uses signal.alarm() and raises
        # ValueError outside the main thread; we impose the limit ourselves.
        return self._mv.parse(text, parsing_timeout=None)

    def _parse_gold(self, reference: str) -> list[Any]:
        """Parse a reference answer; plain text parses numbers and fractions ("46", "1/2") but
        not LaTeX ("\\sqrt{2}", "x+1"), so fall back to reading it as inline math."""
        return self._parse(reference) or self._parse(f"${reference}$")

    def _score_row(self, completion: str, gold: list[Any]) -> float:
        predicted = self._parse(completion)
        if not predicted:
            self._count("no_answer")
            return 0.0
        # timeout_seconds=None for the same reason as parsing_timeout=None above.
        return 1.0 if self._mv.verify(gold, predicted, timeout_seconds=None) else 0.0

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: Any
    ) -> list[float | None]:
        references = _column("math_verify", columns, self.column)
        # GRPO-style batches repeat each prompt's reference once per completion: parse it once.
        gold_cache: dict[str, list[Any]] = {}
        scores: list[float | None] = []
        for completion, reference in zip(completions, references, strict=True):
            if reference is None:
                scores.append(None)
                continue
            try:
                with _time_limit(self.timeout_seconds):
                    key = str(reference)
                    if key not in gold_cache:
                        gold_cache[key] = self._parse_gold(key)
                    gold = gold_cache[key]
                    if not gold:
                        self._count("gold_unparsed")
                        scores.append(0.0)
                        continue
                    scores.append(self._score_row(completion, gold))
            except _RowTimeout:
                self._count("timeout")
                scores.append(0.0)
        return scores


def math_verify(column: str = "answer", timeout_seconds: float | None = 5.0) -> RewardFn:
    """1.0 when the completion's final answer is mathematically equal to the row's ``column``.

    Uses the ``math-verify`` package: the answer is extracted from the completion (``\\boxed{}``
    first, then LaTeX or plain expressions) and compared symbolically and numerically, so
    ``\\boxed{\\frac{1}{2}}`` matches a reference of ``0.5``. A row that cannot be parsed or
    takes longer than ``timeout_seconds`` (per row, parse and compare) scores 0.0 and is
    counted in the returned function's ``failures``. Rows with no reference score ``None``.

    The time limit uses SIGALRM, so it only applies when the reward is called from the main
    thread; called from another thread a row runs without any limit (set ``timeout_seconds:
    null`` to make that explicit everywhere).
    """
    column = _check_str("math_verify", "column", column)
    if timeout_seconds is not None:
        timeout_seconds = _check_number(
            "math_verify", "timeout_seconds", timeout_seconds, positive=True
        )
    return MathVerifyReward(column, timeout_seconds)


# --------------------------------------------------------------------------- regex_format


def regex_format(pattern: str, full_match: bool = False) -> RewardFn:
    """1.0 when the completion matches the regular expression ``pattern``, else 0.0.

    ``.`` also matches newlines (DOTALL). With ``full_match`` the whole completion must match;
    otherwise a match anywhere counts (``re.search``).
    """
    pattern = _check_str("regex_format", "pattern", pattern)
    full_match = _check_bool("regex_format", "full_match", full_match)
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as err:
        raise ConfigError(
            f"reward 'regex_format': arg 'pattern' {pattern!r} is not a valid regex: {err}"
        ) from err
    match = compiled.fullmatch if full_match else compiled.search

    def score(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        return [1.0 if match(completion) else 0.0 for completion in completions]

    return score


# --------------------------------------------------------------------------- length_penalty


def length_penalty(max_chars: int, coef: float = 1.0) -> RewardFn:
    """0.0 up to ``max_chars`` characters, then a penalty growing linearly to ``-coef``.

    Score: ``-coef * min(1, (len(completion) - max_chars) / max_chars)``, so a completion
    twice the limit or longer gets the full ``-coef``.
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars <= 0:
        raise ConfigError(
            f"reward 'length_penalty': arg 'max_chars' must be a whole number > 0, "
            f"got {max_chars!r}"
        )
    coef = _check_number("length_penalty", "coef", coef, positive=False)

    def score(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        scores: list[float | None] = []
        for completion in completions:
            over = len(completion) - max_chars
            scores.append(0.0 if over <= 0 else -coef * min(1.0, over / max_chars))
        return scores

    return score


# The rule rewards live in rules.py, which imports the helpers above from this module: import
# it only now, once they are all defined.
from rewardlab.rewards.novelty import novelty_embedding, novelty_ngram
from rewardlab.rewards.rules import (
    bleu,
    cosine_length,
    length,
    multiple_choice,
    numeric,
    overlong,
    repetition,
    think_answer_format,
    tool_call,
)
from rewardlab.rewards.sandbox import code_exec

REWARD_FACTORIES: dict[str, RewardFactory] = {
    "exact_match": exact_match,
    "math_verify": math_verify,
    "regex_format": regex_format,
    "length_penalty": length_penalty,
    "numeric": numeric,
    "multiple_choice": multiple_choice,
    "format": think_answer_format,
    "length": length,
    "cosine_length": cosine_length,
    "repetition": repetition,
    "overlong": overlong,
    "tool_call": tool_call,
    "bleu": bleu,
    "code_exec": code_exec,
    "novelty_ngram": novelty_ngram,
    "novelty_embedding": novelty_embedding,
}
