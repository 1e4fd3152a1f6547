"""Preference functions ("judges") P(a beats b | prompt) and the SPO win-rate reward.

A judge compares two completions of one prompt and returns the probability that the first
wins. It need not be transitive (rock beats scissors beats paper beats rock is allowed), which
is the point of Self-Play Preference Optimization: "A Minimaximalist Approach to Reinforcement
Learning from Human Feedback" (Swamy et al., arXiv 2401.04056). SPO rewards each of the K
samples y_1..y_K of a prompt with its win rate against the others::

    r_i = 1/(K-1) * sum_{j != i} P(y_i beats y_j)

and hands that reward to any advantage estimator (GRPO, RLOO, ...), so no reward model is
fitted and no Bradley-Terry (transitivity) assumption is made.

Two kinds of judge, both built from a ``JudgeConfig`` by :func:`build_preference_fn`:

- no ``function``: compare the combined rewards of reward sources, hard (``temperature`` 0:
  1 / 0.5 / 0) or Bradley-Terry (``sigmoid((r_a - r_b) / temperature)``);
- ``function: module:function``: a user function ``fn(prompts, completions_a, completions_b,
  **args, **columns)`` returning one probability in [0, 1] per row.

The built-in reward ``spo`` (registered in ``REWARD_FACTORIES`` when this module is imported,
which ``rewardlab.rewards`` does) wraps a judge as a reward.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from rewardlab.config import JudgeConfig, RewardSpec, parse_config
from rewardlab.errors import ConfigError, RewardlabError
from rewardlab.rewards.builtin import REWARD_FACTORIES, RewardFn
from rewardlab.rewards.combine import combine_rewards
from rewardlab.rewards.loading import (
    TASK_REWARD,
    RewardSource,
    _user_function,
    build_reward_sources,
)
from rewardlab.rewards.scoring import _show, _where, score_completions

Columns = Mapping[str, Sequence[Any]]
KeyName = Callable[[str], str]  # a sub-key ("function", "args.x") -> how a message names it

_CONTRACT = "a judge must return one probability in [0, 1] per row (pair of completions)"


# --------------------------------------------------------------------------- the judges


class PreferenceFn:
    """P(a beats b | prompt) for rows of (prompt, completion a, completion b, columns)."""

    name: str

    def probs(
        self,
        prompts: list[str],
        completions_a: list[str],
        completions_b: list[str],
        columns: Columns,
    ) -> torch.Tensor:
        """float32 ``[M]`` in [0, 1]: row m is P(completions_a[m] beats completions_b[m]);
        ``columns`` are lists aligned with the rows (the prompt's dataset columns)."""
        raise NotImplementedError


class RewardPreference(PreferenceFn):
    """Compares the weighted sum (``combine_rewards``) of reward sources' raw scores.

    ``temperature`` 0: 1.0 if a scores higher, 0.0 if lower, 0.5 on a tie; otherwise the
    Bradley-Terry probability ``sigmoid((r_a - r_b) / temperature)``. The sources' transforms
    and the run's ``reward_combiner`` are not applied: they are batch-level shaping, not a
    property of one completion.
    """

    def __init__(self, sources: list[RewardSource], temperature: float) -> None:
        self.sources = sources
        self.temperature = temperature
        self.weights = {s.name: s.weight for s in sources}
        self.name = "reward comparison of " + ", ".join(self.weights)

    def probs(
        self,
        prompts: list[str],
        completions_a: list[str],
        completions_b: list[str],
        columns: Columns,
    ) -> torch.Tensor:
        _check_rows(prompts, completions_a, completions_b, columns)
        if not prompts:
            return torch.zeros(0)
        rewards, index_a, index_b = self._score_distinct(
            prompts, completions_a, completions_b, columns
        )
        diff = rewards[index_a] - rewards[index_b]
        if self.temperature == 0:
            return (diff > 0).float() + 0.5 * (diff == 0).float()
        return torch.sigmoid(diff / self.temperature).float()

    def _score_distinct(
        self,
        prompts: list[str],
        completions_a: list[str],
        completions_b: list[str],
        columns: Columns,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score each distinct (prompt, completion, columns) once: in a group of K samples
        every completion is in K-1 pairs, and rewards can be slow (code execution, a model).
        Returns the combined rewards [U] and each row's index into them for a and b."""
        seen: dict[Any, int] = {}
        rows: list[tuple[int, str]] = []  # (pair row, completion) of each distinct item
        index: dict[str, list[int]] = {"a": [], "b": []}
        for side, completions in (("a", completions_a), ("b", completions_b)):
            for m, completion in enumerate(completions):
                key = _item_key(prompts[m], completion, columns, m)
                if key not in seen:
                    seen[key] = len(rows)
                    rows.append((m, completion))
                index[side].append(seen[key])
        distinct_columns = {k: [v[m] for m, _ in rows] for k, v in columns.items()}
        scores = score_completions(
            self.sources, [prompts[m] for m, _ in rows], [c for _, c in rows], distinct_columns
        )
        rewards = combine_rewards(scores, self.weights)
        return rewards, torch.tensor(index["a"]), torch.tensor(index["b"])


def _item_key(prompt: str, completion: str, columns: Columns, m: int) -> Any:
    # The reward may read the columns, so they are part of what makes two items the same;
    # a column of lists or dicts is unhashable, so fall back to its repr (never equal to a tuple).
    values = tuple(column[m] for column in columns.values())
    try:
        hash(values)
    except TypeError:
        return (prompt, completion, repr(values))
    return (prompt, completion, values)


class FunctionPreference(PreferenceFn):
    """A user judge ``fn(prompts, completions_a, completions_b, **args, **columns)`` (its
    ``args`` already bound), its return checked like a reward function's in ``scoring``."""

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn

    def probs(
        self,
        prompts: list[str],
        completions_a: list[str],
        completions_b: list[str],
        columns: Columns,
    ) -> torch.Tensor:
        _check_rows(prompts, completions_a, completions_b, columns)
        self._check_args_vs_columns(columns)
        if not prompts:
            return torch.zeros(0)  # nothing to compare: do not bother the judge
        try:
            returned = self.fn(prompts, completions_a, completions_b, **columns)
        except RewardlabError:
            raise  # already a message meant for the user
        except Exception:  # noqa: BLE001 - a bug in the user's judge: find and name the row
            values = self._row_by_row(prompts, completions_a, completions_b, columns)
        else:
            values = self._validate(returned, prompts, completions_a, completions_b)
        return torch.tensor(values, dtype=torch.float32)

    def _check_args_vs_columns(self, columns: Columns) -> None:
        # A partial lets call-time keywords win, so a column would silently replace the arg.
        bound = getattr(self.fn, "keywords", None) or {}
        clash = sorted(set(bound) & set(columns))
        if clash:
            raise RewardlabError(
                f"judge '{self.name}': arg '{clash[0]}' has the same name as a dataset column, "
                "which would replace it; rename the arg (in the function and in the judge's args)"
            )

    def _row_by_row(
        self,
        prompts: list[str],
        completions_a: list[str],
        completions_b: list[str],
        columns: Columns,
    ) -> list[float]:
        """After the batch call raised: call each row alone, to name the row that raises."""
        values: list[float] = []
        for m in range(len(prompts)):
            one = {k: list(v[m : m + 1]) for k, v in columns.items()}
            rows = (prompts[m : m + 1], completions_a[m : m + 1], completions_b[m : m + 1])
            try:
                returned = self.fn(*rows, **one)
            except RewardlabError:
                raise
            except Exception as err:
                raise RewardlabError(
                    f"judge '{self.name}' raised {type(err).__name__}: {err} ({_where(err)}) on "
                    f"row {m} ({_describe_row(prompts, completions_a, completions_b, m)}); "
                    "fix the judge"
                ) from err
            values += self._validate(returned, *rows, first_row=m)
        return values

    def _validate(
        self,
        returned: Any,
        prompts: list[str],
        completions_a: list[str],
        completions_b: list[str],
        first_row: int = 0,
    ) -> list[float]:
        if hasattr(returned, "tolist") and not isinstance(returned, (str, bytes)):
            returned = returned.tolist()  # a tensor or ndarray: check plain Python numbers
        rows = len(prompts)
        if isinstance(returned, (str, bytes)) or not isinstance(returned, Sequence):
            raise RewardlabError(
                f"judge '{self.name}' returned {_show(returned)} ({type(returned).__name__}); "
                f"{_CONTRACT}, as a list of {rows}"
            )
        if len(returned) != rows:
            raise RewardlabError(
                f"judge '{self.name}' returned {len(returned)} probabilities for {rows} rows; "
                f"{_CONTRACT}"
            )
        values = []
        for m, value in enumerate(returned):
            # bool is an int subclass, but True is more likely a bug than "certainly wins".
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not ok or not 0.0 <= float(value) <= 1.0:  # NaN fails the range test too
                raise RewardlabError(
                    f"judge '{self.name}' returned {_show(value)} for row {first_row + m} "
                    f"({_describe_row(prompts, completions_a, completions_b, m)}); {_CONTRACT}"
                )
            values.append(float(value))
        return values


def _describe_row(
    prompts: list[str], completions_a: list[str], completions_b: list[str], m: int
) -> str:
    return (
        f"prompt {_show(prompts[m])}, completion a {_show(completions_a[m])}, "
        f"completion b {_show(completions_b[m])}"
    )


def _check_rows(
    prompts: list[str], completions_a: list[str], completions_b: list[str], columns: Columns
) -> None:
    # The caller (group_win_matrix, a trainer) builds these lists: a mismatch is its bug.
    rows = len(prompts)
    if len(completions_a) != rows or len(completions_b) != rows:
        raise ValueError(
            f"{rows} prompts for {len(completions_a)} completions a and {len(completions_b)} b"
        )
    for name, values in columns.items():
        if len(values) != rows:
            raise ValueError(f"column '{name}' has {len(values)} values for {rows} rows")


# --------------------------------------------------------------------------- building


def build_preference_fn(
    judge: JudgeConfig, sources: list[RewardSource], where: str
) -> PreferenceFn:
    """The judge ``judge`` describes; without a ``function`` it compares ``sources``' combined
    rewards. ``where`` is the config key of ``judge``, for messages (``preference.judge``)."""
    return _build(judge, sources, lambda key: f"{where}.{key}")


def _build(judge: JudgeConfig, sources: list[RewardSource], key: KeyName) -> PreferenceFn:
    if judge.function is None:
        if judge.args:
            raise ConfigError(
                f"{key('args')}: args are passed to a judge function, but no function is set; "
                "set function (module:function) or remove args"
            )
        if not sources:
            raise ConfigError(
                f"{key('function')}: with no judge function the judge compares rewards, but "
                "there are none to compare; set function (module:function) or give a reward"
            )
        if not math.isfinite(judge.temperature):
            raise ConfigError(f"{key('temperature')}: must be a finite number >= 0")
        return RewardPreference(sources, judge.temperature)
    if judge.temperature != 0:
        raise ConfigError(
            f"{key('temperature')}: applies only when the judge compares rewards (no function); "
            "a judge function returns its own probabilities (give it an arg to soften them)"
        )
    return FunctionPreference(judge.function, _import_judge(judge, key))


def _import_judge(judge: JudgeConfig, key: KeyName) -> Callable[..., Any]:
    """Import and arg-check the judge with the reward loader, then re-address its messages
    from ``rewards[0].name`` / ``rewards[0].args.x`` to the judge's own keys."""
    assert judge.function is not None
    spec = RewardSpec(name=judge.function, args=judge.args)
    rename = {"name": "function"}
    try:
        return _user_function(0, spec)
    except ConfigError as err:
        message = _readdress(str(err), key, lambda k: rename.get(k, k))
        for reward_words, judge_words in _JUDGE_WORDING:
            message = message.replace(reward_words, judge_words)
        raise ConfigError(message) from None
    except Exception as err:
        # A bug in the user's module: keep its traceback, but name the judge, not a reward.
        notes = getattr(err, "__notes__", [])
        notes[:] = [n.replace("for rewards[0]", f"for {key('function')}") for n in notes]
        raise


# The reward loader's words that are wrong for a judge.
_JUDGE_WORDING = (
    ("for reward '", "for judge '"),
    (
        "a reward must be callable as fn(prompts, completions, **columns)",
        "a judge must be callable as fn(prompts, completions_a, completions_b, **columns)",
    ),
)

_ADDRESS = re.compile(r"rewards\[0\]\.(\w+)((?:\.\w+)*): ")


def _readdress(message: str, key: KeyName, rename: Callable[[str], str]) -> str:
    """``rewards[0].<first>.<rest>: text`` -> ``key(rename(first).<rest>): text``."""
    found = _ADDRESS.match(message)
    if found is None:
        return message
    return f"{key(rename(found[1]) + found[2])}: {message[found.end():]}"


# --------------------------------------------------------------------------- win rates


def group_win_matrix(
    pref: PreferenceFn, prompts: list[str], completions: list[str], n: int, columns: Columns
) -> torch.Tensor:
    """P[g, i, j] = P(y_i beats y_j), float32 ``[G, n, n]``, for the ``n`` adjacent completions
    of each of the G prompts (rows ``g*n .. g*n+n-1``, as the RL trainer lays out a batch).

    The judge is asked once per unordered pair i < j, all pairs of the batch in one call; then
    P[j, i] = 1 - P[i, j] (an order-biased judge is read in one order only) and the diagonal is
    0.5. Each pair's columns are taken from row i (a group's rows share one prompt).
    """
    batch = len(completions)
    if n < 1 or batch % n != 0:
        raise ValueError(f"{batch} completions do not split into groups of n={n}")
    _check_rows(prompts, completions, completions, columns)
    groups = batch // n
    upper = torch.triu_indices(n, n, offset=1)  # [2, n(n-1)/2]: the pairs i < j of one group
    group = torch.arange(groups).repeat_interleave(upper.shape[1])
    i, j = upper[0].repeat(groups), upper[1].repeat(groups)
    p = _pair_probs(pref, prompts, completions, columns, group * n + i, group * n + j)
    matrix = torch.full((groups, n, n), 0.5)
    matrix[group, i, j] = p
    matrix[group, j, i] = 1.0 - p
    return matrix


def win_rates(matrix: torch.Tensor) -> torch.Tensor:
    """SPO's reward r_i = 1/(n-1) * sum_{j != i} P[g, i, j] for each completion: float32
    ``[G*n]`` from ``[G, n, n]``. A group of one has no one to beat: 0.5 (a tie)."""
    if matrix.dim() != 3 or matrix.shape[1] != matrix.shape[2]:
        raise ValueError(f"expected a [G, n, n] matrix, got shape {tuple(matrix.shape)}")
    groups, n, _ = matrix.shape
    if n == 1:
        return torch.full((groups,), 0.5)
    off_diagonal = matrix.sum(-1) - matrix.diagonal(dim1=1, dim2=2)
    return (off_diagonal / (n - 1)).reshape(groups * n).float()


def prompt_win_rates(
    pref: PreferenceFn, prompts: list[str], completions: list[str], columns: Columns
) -> torch.Tensor:
    """Win rates [B] where the completions of identical prompt texts form a group, wherever
    they are in the batch and however many there are (``spo``'s reward: a reward function
    sees only prompts and completions, not the trainer's group layout). Same formula as
    ``win_rates``; a prompt with one completion gets 0.5."""
    _check_rows(prompts, completions, completions, columns)
    members: dict[str, list[int]] = {}
    for row, prompt in enumerate(prompts):
        members.setdefault(prompt, []).append(row)
    pairs = [(a, b) for rows in members.values() for k, a in enumerate(rows) for b in rows[k + 1 :]]
    index_a = torch.tensor([a for a, _ in pairs], dtype=torch.long)
    index_b = torch.tensor([b for _, b in pairs], dtype=torch.long)
    p = _pair_probs(pref, prompts, completions, columns, index_a, index_b)
    wins = torch.zeros(len(prompts), dtype=torch.float64)
    wins.index_add_(0, index_a, p.double())
    wins.index_add_(0, index_b, 1.0 - p.double())
    others = torch.tensor([len(members[prompt]) - 1 for prompt in prompts], dtype=torch.float64)
    return torch.where(others > 0, wins / others.clamp(min=1), 0.5).float()


def _pair_probs(
    pref: PreferenceFn,
    prompts: list[str],
    completions: list[str],
    columns: Columns,
    index_a: torch.Tensor,
    index_b: torch.Tensor,
) -> torch.Tensor:
    """One judge call for all the pairs (rows index_a[m] vs index_b[m]): float32 [M]."""
    rows_a, rows_b = index_a.tolist(), index_b.tolist()
    p = pref.probs(
        [prompts[a] for a in rows_a],
        [completions[a] for a in rows_a],
        [completions[b] for b in rows_b],
        {k: [v[a] for a in rows_a] for k, v in columns.items()},
    )
    if p.shape != (len(rows_a),):
        raise ValueError(f"judge '{pref.name}' gave shape {tuple(p.shape)} for {len(rows_a)} rows")
    return p.float()


# --------------------------------------------------------------------------- the spo reward


class _SpoArgs(JudgeConfig):
    """``spo``'s args: the judge's keys plus the reward it compares (one ``rewards`` entry)."""

    reward: RewardSpec | None = None


class SpoReward:
    """The reward function made by :func:`spo`: win rates within each prompt's samples."""

    def __init__(self, pref: PreferenceFn, inner: RewardSource | None) -> None:
        self.pref = pref
        self.__name__ = "spo"
        inner_fn = inner.fn if inner is not None else None
        # The trainer logs and clears a reward's own `failures` (math_verify's timeouts, ...)
        # but knows only spo's source: share one counter with the compared reward (its own,
        # and its on_error: fallback rows), so they are reported as failures/spo/<reason>.
        counted = getattr(inner_fn, "failures", None)
        self.failures: Counter[str] = counted if isinstance(counted, Counter) else Counter()
        if inner is not None:
            inner.failures = self.failures
        # A stateful compared reward (a novelty bonus) still sees generations and is saved.
        for hook in ("observe", "state_dict", "load_state_dict"):
            if callable(getattr(inner_fn, hook, None)):
                setattr(self, hook, getattr(inner_fn, hook))

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return prompt_win_rates(self.pref, prompts, completions, columns).tolist()


def spo(
    function: str | None = None,
    args: dict[str, Any] | None = None,
    temperature: float = 0.0,
    reward: dict[str, Any] | None = None,
) -> RewardFn:
    """SPO win rate (Swamy et al., "A Minimaximalist Approach to Reinforcement Learning from
    Human Feedback", arXiv 2401.04056): r_i = 1/(K-1) * sum_{j != i} P(y_i beats y_j) over the
    K completions of the same prompt text; a prompt with one completion gets 0.5.

    The judge P is either ``function`` (``module:function``, called as ``fn(prompts,
    completions_a, completions_b, **args, **columns)``, one probability in [0, 1] per row, may
    be intransitive) or a comparison of ``reward`` (``{name, args}``, plus optional ``weight``
    / ``on_error`` / ``fallback``, like a ``rewards`` entry): ``temperature`` 0 gives 1 / 0.5 /
    0, a positive one ``sigmoid((r_a - r_b) / temperature)``. Each unordered pair is judged
    once. The ``task`` reward is not available here (a reward's args cannot reach the run's
    task): use ``exact_match``, which checks what the built-in tasks' verifier does.
    """
    given = {"function": function, "args": args, "temperature": temperature, "reward": reward}
    given = {k: v for k, v in given.items() if v is not None}  # unset: the schema's defaults
    parsed = parse_config(_SpoArgs, given, "reward 'spo'")

    def key(sub: str) -> str:
        return f"reward 'spo': '{sub}'"  # the loader puts rewards[i].args in front

    judge = JudgeConfig(function=parsed.function, args=parsed.args, temperature=parsed.temperature)
    if parsed.function is not None and parsed.reward is not None:
        raise ConfigError(
            f"{key('reward')}: give either function (a judge) or reward (to compare), not both"
        )
    if parsed.function is None and parsed.reward is None:
        raise ConfigError(
            "reward 'spo' needs a judge: arg 'function' (module:function returning P(a beats b)) "
            "or arg 'reward' (a reward to compare, e.g. {name: exact_match})"
        )
    inner = _compared_reward(parsed.reward, key) if parsed.reward is not None else None
    return SpoReward(_build(judge, [inner] if inner else [], key), inner)


def _compared_reward(spec: RewardSpec, key: KeyName) -> RewardSource:
    """Build spo's ``reward`` with the reward loader, its messages re-addressed to it."""
    if spec.name == TASK_REWARD:
        raise ConfigError(
            f"{key('reward.name')}: the 'task' reward is not available inside spo (a reward's "
            "args cannot reach the run's task); use {name: exact_match}, which scores 1 when the "
            "stripped completion equals the 'answer' column as the built-in tasks' verifier "
            "does, or a module:function reward"
        )
    if spec.transforms:
        raise ConfigError(
            f"{key('reward.transforms')}: the compared reward's transforms are not applied "
            "(they shape a batch, not one completion); put transforms on the spo entry instead"
        )
    try:
        (source,) = build_reward_sources([spec], task=None)
    except ConfigError as err:
        raise ConfigError(_readdress(str(err), key, lambda k: f"reward.{k}")) from None
    return source


REWARD_FACTORIES["spo"] = spo
