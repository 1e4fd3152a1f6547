"""``rewardlab bon``: test-time selection curves (best-of-n, majority vote, Best-of-Majority,
conservative-ensemble best-of-n) on held-out prompts.

For each held-out prompt the policy samples ``max(n)`` completions once; the candidates seen
at ``n`` are the first ``n`` of them (with ``average_blocks``, every disjoint block of ``n``,
averaged), so the curves are nested. Each candidate is scored by the selection rewards
(``select:``, e.g. a learned reward model) and by the gold rewards (``rewards:``, e.g. the
task's verifier); each selector picks one candidate per prompt from the selection scores and
the extracted answers, and the report gives, per ``n``, the gold and selection reward of the
picked candidates (mean over prompts), the analytic KL of best-of-n (``log n - (n-1)/n``),
the mean gold of all candidates (what ``n = 1`` gives in expectation) and the oracle best
gold among the ``n`` (pass@n for a 0/1 gold).

Writes ``bon.json``, ``bon.md`` and ``bon.png`` (plus ``config.yaml`` and
``bon_samples.jsonl``) into the run folder.

Config example (``configs/bon_arithmetic.yaml``)::

    model: {name: runs/sft/final}
    data: {task: arithmetic, heldout_size: 64}
    rewards: [{name: task}]                       # gold
    select:                                       # selection reward(s); >1 = an ensemble
      - {name: reward_model, args: {path: runs/rm/final}}
    selectors:
      - {name: best_of_n}
      - {name: majority}
      - {name: best_of_majority, params: {alpha: 0.25}}
      - {name: conservative_bon, params: {aggregation: min}}
    n: [1, 2, 4, 8, 16]
    sampling: {temperature: 1.0, max_new_tokens: 8}
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import typer
from pydantic import Field, model_validator

from rewardlab.config import DataConfig, ModelConfig, RewardSpec, Section
from rewardlab.errors import ConfigError, RegistryError, RewardlabError
from rewardlab.selection import SELECTORS, bon_kl, select

RESULTS_FILE = "bon.json"
TABLE_FILE = "bon.md"
PLOT_FILE = "bon.png"
SAMPLES_FILE = "bon_samples.jsonl"


# --------------------------------------------------------------------------- config


class SelectorChoice(Section):
    """One selector of the run: a ``selector`` registry entry, its params, and an optional
    label (needed to tell apart two uses of one selector with different params)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @model_validator(mode="after")
    def _check(self) -> SelectorChoice:
        try:
            SELECTORS.check_params(self.name, self.params, "params")
        except RegistryError as e:
            raise ValueError(str(e)) from None  # pydantic reports ValueErrors with the key path
        return self


class BonSampling(Section):
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(8, ge=1)
    batch_size: int = Field(256, ge=1, description="sequences per generate call")


def _default_selectors() -> list[SelectorChoice]:
    return [
        SelectorChoice(name="best_of_n"),
        SelectorChoice(name="majority"),
        SelectorChoice(name="best_of_majority", params={"alpha": 0.25}),
        SelectorChoice(name="conservative_bon"),
    ]


class BonConfig(Section):
    """A test-time selection run (``rewardlab bon``)."""

    seed: int = 0
    run_dir: str | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="task")],
        description="gold rewards: what the picked candidates are judged by",
    )
    select: list[RewardSpec] = Field(
        default_factory=list,
        description="selection rewards the selectors rank by (weighted sum); each one is also "
        "a member of conservative_bon's ensemble",
    )
    selectors: list[SelectorChoice] = Field(default_factory=_default_selectors)
    n: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16])
    num_prompts: int | None = Field(None, ge=1, description="default: data.heldout_size")
    answer: Literal["strip", "normalize", "last_number"] = Field(
        "strip",
        description="how majority votes read a completion's answer: the stripped text (the "
        "task verifier's rule), exact_match's normalize, or the last number",
    )
    average_blocks: bool = Field(
        True, description="average each n over the max(n) // n disjoint blocks of samples"
    )
    samples: int = Field(8, ge=0, description="prompts whose candidates go to bon_samples.jsonl")
    sampling: BonSampling = Field(default_factory=BonSampling)

    @model_validator(mode="after")
    def _check(self) -> BonConfig:
        if not self.select:
            raise ValueError(
                "select: give at least one selection reward, for example "
                "[{name: reward_model, args: {path: runs/rm/final}}] or [{name: 'my_rm:score'}]"
            )
        if not self.n or any(k < 1 for k in self.n):
            raise ValueError(f"n: a list of whole numbers >= 1, got {self.n}")
        self.n = sorted(set(self.n))
        if not self.selectors:
            raise ValueError("selectors: give at least one, for example [{name: best_of_n}]")
        labels = [_label(c, self.selectors) for c in self.selectors]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise ValueError(f"selectors: two entries are labelled '{repeated[0]}'; give each a label")
        for spec in (*self.rewards, *self.select):
            if spec.transforms:
                raise ValueError(f"reward '{spec.name}': transforms are not applied by bon; remove them")
        return self


def _label(choice: SelectorChoice, all_choices: list[SelectorChoice]) -> str:
    if choice.label:
        return choice.label
    if sum(c.name == choice.name for c in all_choices) == 1 or not choice.params:
        return choice.name
    shown = ",".join(f"{k}={v}" for k, v in sorted(choice.params.items()))
    return f"{choice.name}({shown})"


# --------------------------------------------------------------------------- answers


def answer_extractor(kind: str) -> Callable[[str], Hashable | None]:
    """The function that reads a completion's final answer for majority votes: ``strip``
    (the built-in tasks' verifier compares the stripped completion), ``normalize``
    (``exact_match``'s normalization) or ``last_number`` (the ``numeric`` reward's parser).
    An empty answer is ``None`` (no vote)."""
    if kind == "strip":
        return lambda text: text.strip() or None
    if kind == "normalize":
        from rewardlab.rewards.builtin import normalize_answer

        return lambda text: normalize_answer(text) or None
    if kind == "last_number":
        from rewardlab.rewards.rules import last_number

        return last_number
    raise ConfigError(f"answer: unknown extractor '{kind}'; choose strip, normalize or last_number")


# --------------------------------------------------------------------------- selection curves


@dataclass
class BonResult:
    run_dir: Path
    n: list[int]
    kl: list[float]
    gold: dict[str, list[float]]  # selector label -> mean gold of its pick, per n
    selection: dict[str, list[float]]  # selector label -> mean selection reward of its pick
    mean_gold: list[float]  # mean gold of all candidates (blocks of n)
    oracle_gold: list[float]  # mean over prompts of the best gold among the n
    num_prompts: int = 0
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "kl_bon": self.kl,
            "gold": self.gold,
            "selection": self.selection,
            "mean_gold": self.mean_gold,
            "oracle_gold": self.oracle_gold,
            "num_prompts": self.num_prompts,
            "seconds": self.seconds,
        }


def selection_curves(
    gold: torch.Tensor,
    selection: torch.Tensor,
    member_scores: torch.Tensor,
    answers: list[list[Hashable | None]],
    selectors: list[tuple[str, str, dict[str, Any]]],
    ns: list[int],
    *,
    average_blocks: bool = True,
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float], list[float], dict[str, torch.Tensor]]:
    """The curves from scored candidates, with no model involved.

    ``gold`` and ``selection`` are ``[P, N]``; ``member_scores`` ``[K, P, N]``; ``answers``
    ``P`` lists of ``N``; ``selectors`` ``(label, name, params)``. For each ``n`` the
    candidates are the blocks ``[b*n, (b+1)*n)`` (only ``b = 0``, the prefix, unless
    ``average_blocks``). Returns gold and selection means per selector label, the mean gold
    and the oracle (best) gold per ``n``, and each selector's picks at the largest ``n``
    (``[P]`` indices).
    """
    num_prompts, max_n = gold.shape
    if max(ns) > max_n:
        raise ValueError(f"n = {max(ns)} needs {max(ns)} candidates per prompt, got {max_n}")
    gold_curve: dict[str, list[float]] = {label: [] for label, _, _ in selectors}
    select_curve: dict[str, list[float]] = {label: [] for label, _, _ in selectors}
    mean_gold: list[float] = []
    oracle: list[float] = []
    picks: dict[str, torch.Tensor] = {}
    for n in ns:
        blocks = range(max_n // n) if average_blocks else range(1)
        spans = [(b * n, (b + 1) * n) for b in blocks]
        mean_gold.append(float(torch.stack([gold[:, lo:hi].mean(1) for lo, hi in spans]).mean()))
        oracle.append(float(torch.stack([gold[:, lo:hi].max(1).values for lo, hi in spans]).mean()))
        for label, name, params in selectors:
            got_gold, got_select = [], []
            chosen_first = []
            for lo, hi in spans:
                for p in range(num_prompts):
                    fields = {
                        "scores": selection[p, lo:hi],
                        "answers": answers[p][lo:hi],
                        "member_scores": member_scores[:, p, lo:hi],
                    }
                    i = lo + select(name, fields, params)
                    got_gold.append(float(gold[p, i]))
                    got_select.append(float(selection[p, i]))
                    if lo == 0:
                        chosen_first.append(i)
            gold_curve[label].append(sum(got_gold) / len(got_gold))
            select_curve[label].append(sum(got_select) / len(got_select))
            if n == ns[-1]:
                picks[label] = torch.tensor(chosen_first)
    return gold_curve, select_curve, mean_gold, oracle, picks


# --------------------------------------------------------------------------- the run


def _sources(specs: list[RewardSpec], task: Any, key: str) -> list[Any]:
    """Reward sources; a config mistake in ``select`` names ``select[i]``, not ``rewards[i]``."""
    from rewardlab.rewards import build_reward_sources

    try:
        return build_reward_sources(specs, task)
    except ConfigError as err:
        text = str(err)
        if key != "rewards" and text.startswith("rewards"):
            raise ConfigError(key + text[len("rewards") :]) from None
        raise


def _check_selectors(config: BonConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """``(label, name, params)`` per selector, each tried once on a two-candidate case so that
    a bad parameter value stops the run before the model loads."""
    chosen = []
    for i, choice in enumerate(config.selectors):
        probe = {
            "scores": torch.tensor([0.0, 1.0]),
            "answers": ["a", "b"],
            "member_scores": torch.zeros(len(config.select), 2),
        }
        try:
            select(choice.name, probe, choice.params)
        except ConfigError as err:
            raise ConfigError(f"selectors[{i}].params: {err}") from None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"selectors[{i}].params: {choice.name}: {err}") from None
        chosen.append((_label(choice, config.selectors), choice.name, dict(choice.params)))
    return chosen


def run_bon(config: BonConfig) -> BonResult:
    """Sample ``max(config.n)`` completions per held-out prompt, score them, select with each
    selector, and write ``bon.json``, ``bon.md``, ``bon.png`` and ``bon_samples.jsonl``."""
    from rewardlab.data.prompts import prompt_source
    from rewardlab.data.tasks import make_task
    from rewardlab.models.loading import load_policy
    from rewardlab.rewards import combine_rewards, score_rows
    from rewardlab.rollout.hf import SamplingParams, decode_completions, generate
    from rewardlab.trainers.common import make_run_dir, save_run_config, seed_everything

    started = time.monotonic()
    run_dir = make_run_dir(config.run_dir, "bon")
    selectors = _check_selectors(config)
    extract = answer_extractor(config.answer)
    # Rewards first: a mistake in them is reported before the model loads.
    task = make_task(config.data.task, config.data.task_args) if config.data.task else None
    gold_sources = _sources(config.rewards, task, "rewards")
    select_sources = _sources(config.select, task, "select")
    seed_everything(config.seed)
    policy, tokenizer = load_policy(config.model, seed=config.seed)
    prompts = prompt_source(config.data, tokenizer, config.seed)
    rows = prompts.heldout_rows[: config.num_prompts] if config.num_prompts else prompts.heldout_rows
    if not rows:
        raise RewardlabError("data: no held-out prompts to select on")
    save_run_config(config, run_dir)

    max_n = config.n[-1]
    params = SamplingParams(
        n=max_n,
        temperature=config.sampling.temperature,
        top_p=config.sampling.top_p,
        max_new_tokens=config.sampling.max_new_tokens,
    )
    per_call = max(1, config.sampling.batch_size // max_n)
    completions: list[str] = []
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        for lo in range(0, len(rows), per_call):
            chunk = [row["prompt"] for row in rows[lo : lo + per_call]]
            completions += decode_completions(tokenizer, generate(policy, tokenizer, chunk, params))

    shape = (len(rows), max_n)
    gold_scores = score_rows(gold_sources, rows, completions, max_n)
    gold = combine_rewards(gold_scores, {s.name: s.weight for s in gold_sources}).view(shape)
    select_scores = score_rows(select_sources, rows, completions, max_n)
    selection = combine_rewards(select_scores, {s.name: s.weight for s in select_sources}).view(shape)
    members = torch.stack([select_scores[s.name].view(shape) * s.weight for s in select_sources])
    answers = [[extract(completions[p * max_n + j]) for j in range(max_n)] for p in range(len(rows))]

    gold_curve, select_curve, mean_gold, oracle, picks = selection_curves(
        gold, selection, members, answers, selectors, config.n, average_blocks=config.average_blocks
    )
    result = BonResult(
        run_dir,
        list(config.n),
        [bon_kl(n) for n in config.n],
        gold_curve,
        select_curve,
        mean_gold,
        oracle,
        num_prompts=len(rows),
    )
    result.seconds = time.monotonic() - started
    samples = [
        {
            "prompt": rows[p]["prompt"],
            "candidates": [
                {
                    "completion": completions[p * max_n + j],
                    "answer": _jsonable(answers[p][j]),
                    "gold": float(gold[p, j]),
                    "selection": float(selection[p, j]),
                }
                for j in range(max_n)
            ],
            "picked": {label: int(idx[p]) for label, idx in picks.items()},
        }
        for p in range(min(config.samples, len(rows)))
    ]
    result.files = write_outputs(result, run_dir, samples)
    return result


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


# --------------------------------------------------------------------------- outputs


def markdown_table(result: BonResult) -> str:
    """One row per ``n``: KL of best-of-n, each selector's gold (selection reward in
    brackets), the mean gold of the candidates and the oracle best gold."""
    labels = list(result.gold)
    head = ["n", "KL(BoN)", *labels, "mean gold", "oracle gold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, n in enumerate(result.n):
        cells = [str(n), f"{result.kl[i]:.3f}"]
        cells += [f"{result.gold[lab][i]:.3f} ({result.selection[lab][i]:.3f})" for lab in labels]
        cells += [f"{result.mean_gold[i]:.3f}", f"{result.oracle_gold[i]:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"\nGold reward of the selected candidate (selection reward in brackets), mean over "
        f"{result.num_prompts} prompts. KL(BoN) = log n - (n-1)/n nats (an upper bound on the "
        "KL of best-of-n to the sampler).\n"
    )
    return "\n".join(lines) + "\n" + note


def write_outputs(result: BonResult, run_dir: Path, samples: list[dict[str, Any]]) -> dict[str, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "json": run_dir / RESULTS_FILE,
        "table": run_dir / TABLE_FILE,
        "plot": run_dir / PLOT_FILE,
        "samples": run_dir / SAMPLES_FILE,
    }
    _write_text(files["json"], json.dumps(result.as_dict(), indent=2) + "\n")
    _write_text(files["table"], markdown_table(result))
    _write_text(files["samples"], "".join(json.dumps(s) + "\n" for s in samples))
    _plot(result, files["plot"])
    return files


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _plot(result: BonResult, path: Path) -> None:
    """Gold reward vs n (log2 axis) per selector, with the mean and oracle gold; and the
    best-of-n gold against its analytic KL."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    by_n, by_kl = figure.subplots(1, 2)
    for label, values in result.gold.items():
        by_n.plot(result.n, values, marker="o", label=label)
        by_kl.plot(result.kl, values, marker="o", label=label)
    by_n.plot(result.n, result.mean_gold, linestyle=":", color="gray", label="mean of candidates")
    by_n.plot(result.n, result.oracle_gold, linestyle="--", color="black", label="oracle (pass@n)")
    if len(result.n) > 1:
        by_n.set_xscale("log", base=2)
    by_n.set_xlabel("n (candidates per prompt)")
    by_n.set_ylabel("gold reward of the pick")
    by_kl.set_xlabel("KL(best-of-n || sampler) = log n - (n-1)/n")
    by_kl.set_ylabel("gold reward of the pick")
    for ax in (by_n, by_kl):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    tmp = path.with_name("." + path.name + ".tmp")
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- CLI


def bon_command(
    config: Annotated[
        Path | None,
        typer.Argument(help="Bon config (YAML). Omit to use the defaults.", show_default=False),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config key: --set n=[1,4,16] (repeatable)."),
    ] = None,
) -> None:
    """Test-time selection: best-of-n, majority vote, Best-of-Majority and conservative
    ensemble best-of-n on held-out prompts; gold reward vs n next to the analytic KL."""
    from rich.console import Console

    from rewardlab.config import load_config

    cfg = load_config(BonConfig, config, set_)  # a config mistake is reported before torch work
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    result = run_bon(cfg)
    console = Console()
    console.print(markdown_table(result))
    console.print(f"results: {result.files['json']}  plot: {result.files['plot']}  ({result.seconds:.0f} s)")


__all__ = [
    "BonConfig",
    "BonResult",
    "BonSampling",
    "SelectorChoice",
    "answer_extractor",
    "bon_command",
    "markdown_table",
    "run_bon",
    "selection_curves",
]
