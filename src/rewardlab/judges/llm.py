"""LLM judges over any OpenAI-compatible chat endpoint: a pointwise reward and a pairwise
preference function.

Pointwise reward ``llm_judge`` (a built-in reward, registered in ``REWARD_FACTORIES`` when
this module is imported, which ``rewardlab.rewards`` does)::

    rewards:
      - name: llm_judge
        args:
          endpoint: http://127.0.0.1:8000/v1   # rewardlab serve MODEL prints this
          model: judge-model
          rubric: "Rate the answer from 0 to 10 ... {prompt} ... {completion} ... Score: <n>"
          min_score: 0
          max_score: 10
          api_key_env: OPENAI_API_KEY           # the variable's name, never the key
          timeout: 30
          retries: 2
          max_workers: 4
          cache: true                           # or a .jsonl path, or false

The rubric is a ``str.format`` template with ``{prompt}`` and ``{completion}``, and optionally
``{reference}`` (read from the dataset column ``reference_column``, ``answer`` by default).
The judge's reply is parsed strictly: its last non-empty line must be ``Score: <number>``
(e.g. ``Score: 7``, ``Score: 7.5``), the only such line, with the number in
``[min_score, max_score]``. Anything else counts as a failed attempt and is retried.

Failure contract: a row that still fails after its retries (timeout, connection error, HTTP
error, garbage body, unparsable reply) is never scored 0. With ``on_failure: raise`` (default)
the batch stops with a ``JudgeError`` naming the endpoint and the row; with ``on_failure:
none`` the row scores None (n/a, excluded like any n/a reward) and is counted as
``failures/<name>/judge_failed``. (The source-level ``on_error: fallback`` does not apply: a
``JudgeError`` is a user-facing error, which scoring re-raises.)

Pairwise judge ``pairwise`` for ``preference.judge`` / the ``spo`` reward::

    judge:
      function: rewardlab.judges.llm:pairwise
      args: {endpoint: http://127.0.0.1:8000/v1, model: judge-model}

returns P(a beats b) in {0, 0.5, 1}: the reply's last non-empty line must be ``Winner: A``,
``Winner: B`` or ``Winner: tie``.
"""

from __future__ import annotations

import math
import re
import string
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rewardlab.errors import ConfigError, DataError
from rewardlab.judges.client import ChatClient, JudgeError, api_key_from_env
from rewardlab.rewards.builtin import REWARD_FACTORIES

DEFAULT_POINTWISE_RUBRIC = """You are grading a response to a task.

Task:
{prompt}

Response:
{completion}

Rate how well the response solves the task, from {min_score} (wrong or empty) to {max_score} \
(fully correct and clear). Reply with a short justification, then a last line of the exact \
form:
Score: <number>"""

DEFAULT_REFERENCE_RUBRIC = """You are checking a response against a reference answer.

Question:
{prompt}

Reference answer:
{reference}

Response:
{completion}

Does the response reach the reference answer? Give {max_score} if it does, {min_score} if it \
does not (or gives no answer). End with a last line of the exact form:
Score: <number>"""

DEFAULT_PAIRWISE_RUBRIC = """Two responses answer the same task. Which is better?

Task:
{prompt}

Response A:
{completion_a}

Response B:
{completion_b}

Reply with a short justification, then a last line of the exact form:
Winner: A
or
Winner: B
or
Winner: tie"""

_SCORE_LINE = re.compile(r"Score:\s*(-?\d+(?:\.\d+)?)")
_WINNER_LINE = re.compile(r"Winner:\s*(A|B|tie)")
_WINNER_PROB = {"A": 1.0, "B": 0.0, "tie": 0.5}


# --------------------------------------------------------------------------- strict parsers


def parse_score(reply: str, min_score: float, max_score: float) -> float:
    """The number of the reply's last non-empty line ``Score: <number>``; ValueError for a
    reply without it, with more than one ``Score:`` line, or with a score out of range."""
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty reply")
    if sum(line.startswith("Score:") for line in lines) > 1:
        raise ValueError(f"more than one 'Score:' line in {_clip(reply)}")
    found = _SCORE_LINE.fullmatch(lines[-1])
    if found is None:
        raise ValueError(f"the last line is not 'Score: <number>': {_clip(lines[-1])}")
    score = float(found[1])
    if not min_score <= score <= max_score:
        raise ValueError(f"score {found[1]} is outside [{min_score:g}, {max_score:g}]")
    return score


def parse_winner(reply: str) -> float:
    """P(A beats B) from the reply's last non-empty line ``Winner: A|B|tie``: 1, 0 or 0.5."""
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty reply")
    if sum(line.startswith("Winner:") for line in lines) > 1:
        raise ValueError(f"more than one 'Winner:' line in {_clip(reply)}")
    found = _WINNER_LINE.fullmatch(lines[-1])
    if found is None:
        raise ValueError(f"the last line is not 'Winner: A|B|tie': {_clip(lines[-1])}")
    return _WINNER_PROB[found[1]]


def _clip(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# --------------------------------------------------------------------------- arg checks


def _fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:  # a lone '{' or '}'
        raise ConfigError(
            f"arg 'rubric' is not a valid template ({err}); write literal braces as {{{{ }}}}"
        ) from None


def _check_rubric(owner: str, rubric: Any, required: set[str], allowed: set[str]) -> str:
    if not isinstance(rubric, str) or not rubric.strip():
        raise ConfigError(f"{owner}: arg 'rubric' must be a non-empty string, got {rubric!r}")
    fields = _fields(rubric)
    unknown = sorted(fields - allowed)
    if unknown:
        raise ConfigError(
            f"{owner}: arg 'rubric' has an unknown placeholder {{{unknown[0]}}}; the placeholders "
            f"are {', '.join('{' + f + '}' for f in sorted(allowed))} (write literal braces as "
            "{{ }})"
        )
    missing = sorted(required - fields)
    if missing:
        raise ConfigError(f"{owner}: arg 'rubric' must contain {{{missing[0]}}}")
    return rubric


def _number(owner: str, arg: str, value: Any, *, low: float | None = None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (low is not None and value < low):
        bound = f" >= {low:g}" if low is not None else ""
        raise ConfigError(f"{owner}: arg '{arg}' must be a number{bound}, got {value!r}")
    return float(value)


def _integer(owner: str, arg: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{owner}: arg '{arg}' must be an integer >= {low}, got {value!r}")
    return value


def _cache_arg(owner: str, value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, Path)) and str(value):
        return str(value)
    raise ConfigError(
        f"{owner}: arg 'cache' must be true (in memory), false, or a .jsonl file path, "
        f"got {value!r}"
    )


def make_client(
    owner: str,
    *,
    endpoint: Any,
    model: Any,
    api_key_env: Any = None,
    timeout: Any = 30.0,
    retries: Any = 2,
    backoff: Any = 0.5,
    max_workers: Any = 4,
    cache: Any = True,
    max_tokens: Any = 256,
    temperature: Any = 0.0,
) -> ChatClient:
    """A ChatClient from config args, each checked with a message naming ``owner`` and the arg."""
    for arg, value in (("endpoint", endpoint), ("model", model)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{owner}: arg '{arg}' must be a non-empty string, got {value!r}")
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"{owner}: arg 'endpoint' must be an http(s) base URL such as "
            f"http://127.0.0.1:8000/v1, got {endpoint!r}"
        )
    try:
        key = api_key_from_env(api_key_env)
    except ConfigError as err:
        raise ConfigError(f"{owner}: {err}") from None
    return ChatClient(
        endpoint=endpoint,
        model=model,
        api_key=key,
        timeout=_number(owner, "timeout", timeout, low=0.001),
        retries=_integer(owner, "retries", retries, 0),
        backoff=_number(owner, "backoff", backoff, low=0),
        max_workers=_integer(owner, "max_workers", max_workers, 1),
        cache=_cache_arg(owner, cache),
        max_tokens=_integer(owner, "max_tokens", max_tokens, 1),
        temperature=_number(owner, "temperature", temperature, low=0),
    )


# --------------------------------------------------------------------------- pointwise


class LLMJudgeReward:
    """``fn(prompts, completions, **columns)`` -> one score per completion (or None for a
    failed row with ``on_failure: none``). ``failures`` counts those rows."""

    def __init__(
        self,
        client: ChatClient,
        rubric: str,
        min_score: float,
        max_score: float,
        reference_column: str | None,
        normalize: bool,
        on_failure: str,
        system: str | None,
    ) -> None:
        self.client = client
        self.rubric = rubric
        self.min_score = min_score
        self.max_score = max_score
        self.reference_column = reference_column
        self.normalize = normalize
        self.on_failure = on_failure
        self.system = system
        self.failures: Counter[str] = Counter()
        self.last_error: str | None = None  # the latest failed row's message (on_failure none)
        self._count_lock = threading.Lock()

    def messages(self, prompt: str, completion: str, reference: Any = None) -> list[dict[str, str]]:
        values = {
            "prompt": prompt,
            "completion": completion,
            "reference": "" if reference is None else str(reference),
            "min_score": f"{self.min_score:g}",
            "max_score": f"{self.max_score:g}",
        }
        out = [{"role": "system", "content": self.system}] if self.system else []
        return [*out, {"role": "user", "content": self.rubric.format(**values)}]

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: Sequence[Any]
    ) -> list[float | None]:
        references: Sequence[Any] = [None] * len(completions)
        if self.reference_column is not None:
            if self.reference_column not in columns:
                have = ", ".join(sorted(columns)) or "none"
                raise DataError(
                    f"reward 'llm_judge': the rubric uses {{reference}}, read from column "
                    f"'{self.reference_column}', but the data has no such column (columns: "
                    f"{have}); set the arg 'reference_column' or drop {{reference}}"
                )
            references = columns[self.reference_column]
        conversations = [
            self.messages(p, c, r) for p, c, r in zip(prompts, completions, references, strict=True)
        ]

        def parse(reply: str) -> float:
            return parse_score(reply, self.min_score, self.max_score)

        if self.on_failure == "raise":
            names = [f"completion {i} (prompt {_clip(p, 40)})" for i, p in enumerate(prompts)]
            scores: list[float | None] = list(
                self.client.complete_many(conversations, parse, row_names=names)
            )
        else:
            scores = self._tolerant(conversations, parse)
        if self.normalize:
            span = self.max_score - self.min_score
            scores = [None if s is None else (s - self.min_score) / span for s in scores]
        return scores

    def _tolerant(self, conversations: list[list[dict[str, str]]], parse: Any) -> list[float | None]:
        """on_failure none: each row on its own, a failed one None and counted."""

        def one(messages: list[dict[str, str]]) -> float | None:
            try:
                return self.client.complete(messages, parse)
            except JudgeError as err:
                with self._count_lock:
                    self.failures["judge_failed"] += 1
                    self.last_error = str(err)
                return None

        # complete() has its own pool of one; run the rows concurrently here instead.
        workers = min(self.client.max_workers, max(1, len(conversations)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge-row") as pool:
            return list(pool.map(one, conversations))


def llm_judge(
    endpoint: str,
    model: str,
    rubric: str | None = None,
    mode: str = "pointwise",
    min_score: float = 0,
    max_score: float = 10,
    reference_column: str = "answer",
    normalize: bool = False,
    on_failure: str = "raise",
    system: str | None = None,
    api_key_env: str | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    backoff: float = 0.5,
    max_workers: int = 4,
    cache: bool | str = True,
    max_tokens: int = 256,
    temperature: float = 0.0,
) -> LLMJudgeReward:
    """An LLM judge's score of each completion, from an OpenAI-compatible chat ``endpoint``.

    ``rubric`` (default: a 0-10 quality rubric) is a template with {prompt}, {completion} and
    optional {reference} (column ``reference_column``), {min_score}, {max_score}; the reply's
    last line must be ``Score: <number>`` in [min_score, max_score] (``normalize``: scaled to
    [0, 1]). Requests run ``max_workers`` at a time, each with ``timeout`` seconds and
    ``retries`` retries; replies are cached (``cache``: true = memory, a path = JSON-lines
    file, false = off). A row that still fails raises (``on_failure: raise``) or scores None
    and is counted (``on_failure: none``), never 0. The API key is read from the environment
    variable named by ``api_key_env``.
    """
    owner = "reward 'llm_judge'"
    if mode != "pointwise":
        raise ConfigError(
            f"{owner}: arg 'mode' must be 'pointwise', got {mode!r}; for pairwise choices use "
            "the judge function rewardlab.judges.llm:pairwise (preference.judge or the spo reward)"
        )
    low = _number(owner, "min_score", min_score)
    high = _number(owner, "max_score", max_score)
    if high <= low:
        raise ConfigError(f"{owner}: arg 'max_score' ({high:g}) must be > min_score ({low:g})")
    if on_failure not in ("raise", "none"):
        raise ConfigError(f"{owner}: arg 'on_failure' must be 'raise' or 'none', got {on_failure!r}")
    if not isinstance(normalize, bool):
        raise ConfigError(f"{owner}: arg 'normalize' must be true or false, got {normalize!r}")
    if system is not None and not isinstance(system, str):
        raise ConfigError(f"{owner}: arg 'system' must be a string, got {system!r}")
    if not isinstance(reference_column, str) or not reference_column:
        raise ConfigError(f"{owner}: arg 'reference_column' must be a column name")
    text = _check_rubric(
        owner,
        DEFAULT_POINTWISE_RUBRIC if rubric is None else rubric,
        required={"completion"},
        allowed={"prompt", "completion", "reference", "min_score", "max_score"},
    )
    client = make_client(
        owner,
        endpoint=endpoint,
        model=model,
        api_key_env=api_key_env,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        max_workers=max_workers,
        cache=cache,
        max_tokens=max_tokens,
        temperature=temperature,
    )
    uses_reference = "reference" in _fields(text)
    return LLMJudgeReward(
        client,
        text,
        low,
        high,
        reference_column if uses_reference else None,
        normalize,
        on_failure,
        system,
    )


REWARD_FACTORIES["llm_judge"] = llm_judge


# --------------------------------------------------------------------------- pairwise

# One client per distinct configuration, so the in-memory cache lives across calls (the
# preference machinery calls the judge function once per batch).
_CLIENTS: dict[tuple[Any, ...], ChatClient] = {}
_CLIENTS_LOCK = threading.Lock()


def pairwise(
    prompts: list[str],
    completions_a: list[str],
    completions_b: list[str],
    *,
    endpoint: str,
    model: str,
    rubric: str | None = None,
    system: str | None = None,
    api_key_env: str | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    backoff: float = 0.5,
    max_workers: int = 4,
    cache: bool | str = True,
    max_tokens: int = 256,
    temperature: float = 0.0,
    **columns: Any,
) -> list[float]:
    """P(a beats b) per row from an LLM judge: 1.0 (``Winner: A``), 0.0 (``Winner: B``) or
    0.5 (``Winner: tie``). ``rubric`` is a template with {prompt}, {completion_a},
    {completion_b}. A row that fails after its retries raises a JudgeError (no silent 0.5).
    Dataset columns arrive as extra keywords and are ignored."""
    owner = "judge 'rewardlab.judges.llm:pairwise'"
    text = _check_rubric(
        owner,
        DEFAULT_PAIRWISE_RUBRIC if rubric is None else rubric,
        required={"completion_a", "completion_b"},
        allowed={"prompt", "completion_a", "completion_b"},
    )
    settings = {
        "endpoint": endpoint,
        "model": model,
        "api_key_env": api_key_env,
        "timeout": timeout,
        "retries": retries,
        "backoff": backoff,
        "max_workers": max_workers,
        "cache": cache,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = make_client(owner, **settings)
    head = [{"role": "system", "content": system}] if system else []
    conversations = [
        [*head, {"role": "user", "content": text.format(prompt=p, completion_a=a, completion_b=b)}]
        for p, a, b in zip(prompts, completions_a, completions_b, strict=True)
    ]
    names = [f"pair {i} (prompt {_clip(p, 40)})" for i, p in enumerate(prompts)]
    return client.complete_many(conversations, parse_winner, row_names=names)
