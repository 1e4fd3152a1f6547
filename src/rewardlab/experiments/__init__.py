"""Reproductions of the literature's headline claims on small synthetic benchmarks.

``rewardlab experiment NAME`` runs one of them: a CPU-sized version of a paper's setting built
from rewardlab's own registered functions (advantages, policy losses, preference scores), a PNG
plot, and a markdown table whose rows put our number next to the paper's claim and say whether
they agree. ``--fast`` runs a tiny version (seconds) for the tests.

Each experiment is an :class:`Experiment` in :data:`EXPERIMENTS`; its ``run(fast, seed, out)``
returns an :class:`ExperimentResult`. The experiment modules import torch, so they are loaded
only when an experiment runs (``rewardlab experiment --list`` stays light).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardlab.errors import RewardlabError, did_you_mean


@dataclass(frozen=True)
class Row:
    """One line of a result table: what we measured next to what the paper claims.

    ``agree`` is True / False when the claim was checked, None when the row only reports a
    number (no comparable claim)."""

    metric: str
    ours: str
    claim: str
    agree: bool | None
    note: str = ""


@dataclass
class ExperimentResult:
    """What one run produced: the table rows, the files written, and how long it took."""

    name: str
    title: str
    paper: str
    arxiv: str
    rows: list[Row]
    setup: str = ""
    fast: bool = False
    seed: int = 0
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def agreed(self) -> tuple[int, int]:
        """(rows that agree, rows with a verdict)."""
        checked = [r for r in self.rows if r.agree is not None]
        return sum(bool(r.agree) for r in checked), len(checked)


RunFn = Callable[[bool, int, Path], ExperimentResult]


@dataclass(frozen=True)
class Experiment:
    """A registered reproduction. ``target`` is ``module:function`` of its ``run``."""

    name: str
    description: str
    paper: str
    arxiv: str
    target: str

    def run(self, fast: bool = False, seed: int = 0, out: Path | None = None) -> ExperimentResult:
        """Run it, write its PNG and markdown table into ``out``, and return the result."""
        from rewardlab.experiments.report import write_markdown

        out = Path(out) if out is not None else Path("experiments") / self.name
        out.mkdir(parents=True, exist_ok=True)
        module_name, fn_name = self.target.split(":")
        fn: RunFn = getattr(importlib.import_module(module_name), fn_name)
        start = time.perf_counter()
        result = fn(fast, seed, out)
        result.seconds = time.perf_counter() - start
        result.fast, result.seed = fast, seed
        result.files.append(write_markdown(result, out / "result.md"))
        return result


EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    if experiment.name in EXPERIMENTS:
        raise ValueError(f"experiment '{experiment.name}' is registered twice")
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def get(name: str) -> Experiment:
    """The experiment called ``name``; an unknown name lists the valid ones."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise RewardlabError(
            f"unknown experiment '{name}'{did_you_mean(name, EXPERIMENTS)}; "
            f"choose one of: {', '.join(sorted(EXPERIMENTS))} (rewardlab experiment --list)"
        ) from None


register(
    Experiment(
        "bnpo-variance",
        "Bernoulli bandit, prompts of success rate 0.05..0.95: policy-gradient variance and "
        "convergence of BNPO vs GRPO vs REINFORCE (batch and group baselines)",
        "BNPO: Beta Normalization Policy Optimization",
        "2506.02864",
        "rewardlab.experiments.bnpo_variance:run",
    )
)
register(
    Experiment(
        "nash-cycles",
        "Rock-paper-scissors preferences: Nash-MD and Nash-MP (mirror prox) in closed form on "
        "the simplex, converging to the KL-regularized Nash equilibrium; Nash-MP's rate vs "
        "(1+2 beta)^(-N/2)",
        "Nash Learning from Human Feedback; Accelerating Nash Learning from Human Feedback via "
        "Mirror Prox",
        "2312.00886; 2505.19731",
        "rewardlab.experiments.nash_cycles:run",
    )
)
register(
    Experiment(
        "gpm-vs-bt",
        "Cyclic preferences: a Bradley-Terry score model vs a general preference model "
        "(skew-symmetric bilinear score), tabular 3-cycle and featurized items on a circle",
        "General Preference Modeling with Preference Representations for Aligning Language Models",
        "2410.02197",
        "rewardlab.experiments.gpm_vs_bt:run",
    )
)
register(
    Experiment(
        "disco-difficulty",
        "Per-question weight of GRPO (sqrt(p(1-p))) vs DisCO (flat) as a function of the "
        "success rate p: analytic and simulated with the registered grpo advantage and disco loss",
        "DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained Optimization",
        "2505.12366",
        "rewardlab.experiments.disco_difficulty:run",
    )
)
register(
    Experiment(
        "ensemble-overoptimization",
        "Best-of-n up to 10^4 against noisy proxy reward models (tiny MLPs on a synthetic feature "
        "space with a known gold reward): one proxy vs mean, worst-case (min) and "
        "uncertainty-weighted (uwo) ensembles, and a short RL run (gold against KL, with and "
        "without a KL penalty)",
        "Reward Model Ensembles Help Mitigate Overoptimization",
        "2310.02743",
        "rewardlab.experiments.ensemble_overoptimization:run",
    )
)
register(
    Experiment(
        "prm-credit",
        "Tabular stop/continue policy with a per-step process reward: sum-form credit pads steps, "
        "min_form / clip / delta (registered credit transforms) under the prime and gae estimators",
        "Stop Summation: Min-Form Credit Assignment Is All Process Reward Model Needs for "
        "Reasoning; On Designing Effective RL Reward at Training Time for LLM Reasoning",
        "2504.15275; 2410.15115",
        "rewardlab.experiments.prm_credit:run",
    )
)
register(
    Experiment(
        "xpo-exploration",
        "Bandit over 32 responses whose best one the reference rarely samples: XPO vs online DPO "
        "with the registered dpo and xpo losses (history refit and one-step forms)",
        "Exploratory Preference Optimization: Harnessing Implicit Q*-Approximation for "
        "Sample-Efficient RLHF",
        "2405.21046",
        "rewardlab.experiments.xpo_exploration:run",
    )
)
register(
    Experiment(
        "unlikeliness-passk",
        "Prompts with several correct answers of skewed base probability: pass@N of the SFT "
        "base, GRPO and GRPO + unlikeliness reward (tiny model, rewardlab trainer stages)",
        "Rewarding the Unlikely: Lifting GRPO Beyond Distribution Sharpening",
        "2506.02355",
        "rewardlab.experiments.unlikeliness_passk:run",
    )
)
register(
    Experiment(
        "entropy-mechanism",
        "Entropy change of RL steps vs the covariance of log-probability and advantage "
        "(tabular softmax bandit exactly, the tiny model under GRPO per step); policy entropy "
        "of GRPO vs the clip_cov and kl_cov recipes",
        "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models",
        "2505.22617",
        "rewardlab.experiments.entropy_mechanism:run",
    )
)
register(
    Experiment(
        "par-hacking",
        "A verbosity-biased proxy reward on the reverse task: held-out gold (exact answer) over "
        "RL training with the raw proxy, mean/std normalization, log-sigmoid and PAR shaping",
        "Reward Shaping to Mitigate Reward Hacking in RLHF",
        "2502.18770",
        "rewardlab.experiments.par_hacking:run",
    )
)
