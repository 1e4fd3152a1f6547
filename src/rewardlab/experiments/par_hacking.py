"""``par-hacking``: a length-biased proxy reward is hacked; is PAR robust?

"Reward Shaping to Mitigate Reward Hacking in RLHF" (Fu et al.; arXiv 2502.18770). Abstract:
"the RL reward should be bounded" and "benefits from rapid initial growth followed by gradual
convergence"; Preference As Reward (PAR), the formula checked here (registered ``par``
transform, confirmed in the authors' code):

    r_RL(x, y) = (1/M) sum_m sigmoid(r(x, y) - r(x, y_ref,m)),   y_ref,m ~ SFT policy,

"maintains robustness against reward hacking even after two full epochs of training" and beats
other shapers by >= 5 points of AlpacaEval win rate (LLM-scale, not reproduced). The paper's
plots and its RL settings (KL coefficient, PPO details) were not read ([not checked]).

Our hackable setting:

* Task: the built-in ``reverse`` task (2-3 letters). Gold reward = the task's exact answer
  (:func:`gold`).
* Proxy reward (:func:`verbose_proxy`): 1 when the completion *starts with* the answer, plus
  0.05 per character of the completion: a reward model with a verbosity bias. Up to the
  answer's length, a longer completion is needed to be right, so length goes with gold; past
  it, the proxy still pays for length and gold is lost (trailing characters make the answer
  wrong).
* Base: ``builtin:tiny`` after SFT (rewardlab's ``train_sft``) on the task's demonstrations.
  References (PAR, log-sigmoid): the proxy reward of one SFT sample per training prompt, the
  dataset's ``reference_reward`` column (the paper's SFT-response references; it reports one
  suffices).
* RL: the ``rloo`` recipe (leave-one-out baseline, no std normalization: a GRPO-style std
  would divide out the scale that shaping changes), the same seeds and prompts for every
  shaper, through rewardlab's trainer stages (:mod:`rl_loop`). Shapers are registered reward
  transforms on the proxy source: none (raw proxy), ``normalize`` (running mean/std, the
  paper's mean/std baseline), ``log_sigmoid`` (centred on the reference) and ``par``
  (reference rewards). First without a KL penalty, then raw and PAR again with RLHF's
  per-sequence KL penalty to the SFT policy in the reward (r - beta sum_t log pi/pi_ref, k1,
  ``placement: reward``, beta = :data:`KL_COEF`), the setting the paper's shaping sits in.
  With a group baseline and no KL, any increasing transform of the reward keeps the order of a
  group's completions, so every shaper pushes towards the same completions; only a
  counterweight such as the KL penalty lets a bounded reward stop paying for the hack.
* Held-out gold, proxy and completion length are tracked through training.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from rewardlab.config import RunConfig, parse_config
from rewardlab.data.tasks import make_task
from rewardlab.experiments import ExperimentResult, Row
from rewardlab.experiments.report import new_figure, save_figure
from rewardlab.experiments.rl_loop import (
    Loop,
    make_loop,
    sample_scores,
    train_step,
    warm_start,
    write_jsonl,
)

PAPER = "Reward Shaping to Mitigate Reward Hacking in RLHF"
TASK_ARGS = {"min_len": 2, "max_len": 3}
LENGTH_BONUS = 0.05
MODULE = "rewardlab.experiments.par_hacking"
PROXY = f"{MODULE}:verbose_proxy"
GOLD = f"{MODULE}:gold"
KL_COEF = 0.05
PAR = [{"name": "par", "params": {"reference": "reference_rewards"}}]
# name -> (transforms of the proxy source, KL coefficient in the reward)
SHAPERS: dict[str, tuple[list[dict[str, Any]], float]] = {
    "raw proxy": ([], 0.0),
    "normalize (mean/std)": ([{"name": "normalize"}], 0.0),
    "log_sigmoid": ([{"name": "log_sigmoid", "params": {"reference": "reference_rewards"}}], 0.0),
    "par": (PAR, 0.0),
    "raw proxy + KL": ([], KL_COEF),
    "par + KL": (PAR, KL_COEF),
}
FAST_SHAPERS = ("raw proxy", "par", "raw proxy + KL", "par + KL")


def verbose_proxy(
    prompts: list[str], completions: list[str], answer: list[str] | None = None, **columns: Any
) -> list[float]:
    """1 if the completion starts with the answer, plus 0.05 per character (verbosity bias)."""
    assert answer is not None
    return [
        float(c.startswith(a)) + LENGTH_BONUS * len(c)
        for c, a in zip(completions, answer, strict=True)
    ]


def gold(
    prompts: list[str], completions: list[str], answer: list[str] | None = None, **columns: Any
) -> list[float]:
    """The task's own check: the completion is exactly the answer."""
    assert answer is not None
    return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]


def evaluate_gold(loop: Loop, rows: list[dict[str, Any]], seed: int) -> dict[str, float]:
    scores, texts = sample_scores(loop.policy, loop.tokenizer, rows, loop.sources, 4, 8, seed=seed)
    return {
        "gold": float(scores[GOLD].mean()),
        "proxy": float(scores[PROXY].mean()),
        "length": sum(len(t) for t in texts) / len(texts),
    }


def run(fast: bool, seed: int, out: Path) -> ExperimentResult:
    steps = 24 if fast else 80
    per_step = 8
    lr = 1e-3 if fast else 5e-4
    every = 8 if fast else 10
    n_train = 128 if fast else 512
    shapers = {n: SHAPERS[n] for n in (FAST_SHAPERS if fast else SHAPERS)}
    task = make_task("reverse", TASK_ARGS)
    train_rows: list[dict[str, Any]] = [
        task.train_problem(i, seed=seed, stream="rl").row() for i in range(n_train)
    ]
    held = [p.row() for p in task.heldout(48 if fast else 64, seed=seed)]

    with tempfile.TemporaryDirectory(prefix="rewardlab-par-") as tmp:
        folder = Path(tmp)
        base = warm_start(
            folder,
            seed=seed,
            epochs=4,
            lr=1e-3,
            task="reverse",
            task_args=TASK_ARGS,
            num_examples=800,
        )
        rewards = [{"name": PROXY}, {"name": GOLD, "weight": 0.0}]

        def config(transforms: list[dict[str, Any]], data: Path, kl: float = 0.0) -> RunConfig:
            algorithm: dict[str, Any] = {"recipe": "rloo"}
            if kl > 0:
                algorithm["kl"] = {"name": "k1", "coef": kl, "placement": "reward"}
            return parse_config(
                RunConfig,
                {
                    "seed": seed,
                    "model": {"name": str(base)},
                    "data": {"path": str(data), "heldout_size": 8},
                    "rewards": [{"name": PROXY, "transforms": transforms}, rewards[1]],
                    "rollout": {"num_generations": 8, "temperature": 1.0, "max_new_tokens": 8},
                    "algorithm": algorithm,
                    "train": {"steps": steps, "prompts_per_step": per_step, "optim": {"lr": lr}},
                },
            )

        # references: the proxy reward of one SFT sample per prompt
        plain = write_jsonl(folder / "plain.jsonl", train_rows)
        base_loop = make_loop(config([], plain))
        ref_scores, _ = sample_scores(
            base_loop.policy, base_loop.tokenizer, train_rows, base_loop.sources, 1, 8, seed=seed + 5
        )
        for row, value in zip(train_rows, ref_scores[PROXY][:, 0].tolist(), strict=True):
            row["reference_reward"] = value
        ref_gold = float(ref_scores[GOLD].mean())
        data = write_jsonl(folder / "prompts.jsonl", train_rows)
        start = evaluate_gold(base_loop, held, seed + 11)

        curves: dict[str, list[tuple[int, dict[str, float]]]] = {}
        shaped: dict[str, float] = {}
        kl_end: dict[str, float] = {}
        for name, (transforms, kl) in shapers.items():
            loop = make_loop(config(transforms, data, kl))
            curve = [(0, start)]
            for step in range(1, steps + 1):
                train_step(loop, step)
                if step % every == 0:
                    curve.append((step, evaluate_gold(loop, held, seed + 11 + step)))
            curves[name] = curve
            values = [h["reward/advantage_input"] for h in loop.history]
            shaped[name] = sum(values[-max(1, steps // 10) :]) / max(1, steps // 10)
            if kl > 0:
                kls = [kl * h.get("kl/sequence", 0.0) for h in loop.history]
                kl_end[name] = sum(kls[-max(1, steps // 10) :]) / max(1, steps // 10)

    # ---------------------------------------------------------------- figure
    colors = {
        "raw proxy": "tab:red",
        "normalize (mean/std)": "tab:orange",
        "log_sigmoid": "tab:purple",
        "par": "tab:blue",
        "raw proxy + KL": "tab:pink",
        "par + KL": "tab:cyan",
    }
    fig, axes = new_figure(3, width=4.0)
    for ax, key, title in (
        (axes[0, 0], "gold", "held-out gold reward (exact answer)"),
        (axes[0, 1], "proxy", "held-out proxy reward"),
        (axes[0, 2], "length", "completion length (characters)"),
    ):
        for name, curve in curves.items():
            style = "--o" if name.endswith("KL") else "-o"
            ax.plot([s for s, _ in curve], [v[key] for _, v in curve], style, ms=2.5, lw=1, color=colors[name], label=name)
        ax.set_xlabel("RL step")
        ax.set_title(title, fontsize=9)
    axes[0, 0].legend(fontsize=7)
    png = save_figure(fig, out / "par-hacking.png")

    # ---------------------------------------------------------------- rows
    g0 = start["gold"]

    def final(name: str, key: str = "gold") -> float:
        tail = curves[name][-2:]  # the last two evaluations
        return sum(v[key] for _, v in tail) / len(tail)

    def peak(name: str) -> float:
        return max(v["gold"] for _, v in curves[name])

    def half_life(name: str) -> str:
        for s, v in curves[name]:
            if s > 0 and v["gold"] < g0 / 2:
                return str(s)
        return f"> {steps}"

    no_kl = [n for n in curves if not n.endswith("+ KL")]
    summary = "; ".join(
        f"{n}: gold {final(n):.3f} (peak {peak(n):.3f}), gold < half by step {half_life(n)}, "
        f"length {final(n, 'length'):.1f}"
        for n in curves
    )
    sig = 1 / (1 + math.exp(-LENGTH_BONUS * 5))
    rows = [
        Row(
            "raw proxy: held-out gold at the start -> end of training (mean of the last 2 evaluations)",
            f"{g0:.3f} -> {final('raw proxy'):.3f}; length {start['length']:.1f} -> {final('raw proxy', 'length'):.1f}",
            "RLHF is susceptible to reward hacking: the agent exploits flaws in the reward "
            "function rather than learning the intended behavior (abstract)",
            final("raw proxy") < g0 / 2,
            f"agree = gold falls below half its start; the proxy rises "
            f"{start['proxy']:.2f} -> {final('raw proxy', 'proxy'):.2f} while gold falls",
        ),
        Row(
            "PAR: held-out gold at the start -> end of training",
            f"{g0:.3f} -> {final('par'):.3f}; length {start['length']:.1f} -> {final('par', 'length'):.1f}",
            "PAR maintains robustness against reward hacking even after two full epochs of "
            "training (abstract)",
            final("par") >= g0 / 2,
            f"agree = gold stays above half its start. PAR's mean shaped reward over the last "
            f"10% of steps: {shaped['par']:.2f} (it is bounded in (0, 1))",
        ),
        *(
            [
                Row(
                    "no KL penalty, PAR vs the other shapers: final held-out gold",
                    ", ".join(f"{n} {final(n):.3f}" for n in no_kl),
                    "PAR's superior performance over other reward shaping methods (abstract; "
                    "AlpacaEval >= +5 points, LLM-scale)",
                    final("par") >= max(final(n) for n in no_kl if n != "par") + 0.02,
                    "agree = PAR at least 0.02 above the best other shaper",
                )
            ]
            if len(no_kl) > 2
            else []
        ),
        Row(
            f"with the KL penalty in the reward (k1, beta = {KL_COEF}): held-out gold at the "
            "start -> end, raw proxy + KL / PAR + KL",
            f"{g0:.3f} -> {final('raw proxy + KL'):.3f} / {final('par + KL'):.3f}; length "
            f"{final('raw proxy + KL', 'length'):.1f} / {final('par + KL', 'length'):.1f}",
            "PAR maintains robustness against reward hacking (abstract); RLHF's KL penalty to "
            "the SFT policy [the paper's coefficient not checked]",
            final("par + KL") >= g0 / 2 and final("par + KL") >= final("raw proxy + KL") + 0.1,
            "agree = PAR + KL keeps gold above half its start and at least 0.1 above the raw "
            f"proxy with the same beta. Peak gold: raw + KL {peak('raw proxy + KL'):.3f}, "
            f"PAR + KL {peak('par + KL'):.3f}; mean KL penalty term over the last 10% of "
            f"steps: raw {kl_end['raw proxy + KL']:.3f}, PAR {kl_end['par + KL']:.3f}",
        ),
        Row(
            "the mechanism: what 5 characters of padding after a right answer earn, against a "
            "right reference (PAR) / in raw proxy units",
            f"PAR {sig - 0.5:+.3f} ({sig:.3f} vs 0.500); raw {5 * LENGTH_BONUS:+.2f}",
            "bounded reward with rapid initial growth, then convergence (the paper's principles)",
            None,
            f"{ref_gold:.0%} of the SFT references are already right, and the policy starts at "
            "their level, so the hack's gain sits on the steep part of the sigmoid (slope 1/4), "
            "not on its flat top. Without a KL penalty only the order of a group's rewards "
            "matters to the direction of the update, and PAR keeps the raw proxy's order; with "
            "one, PAR's smaller gain no longer pays for the KL cost of padding. Per shaper: "
            + summary,
        ),
    ]
    setup = (
        f"`reverse` (2-3 letters); proxy = [starts with the answer] + {LENGTH_BONUS} x "
        "characters, gold = exact answer; `builtin:tiny` after SFT (4 epochs on "
        "800 demonstrations); references = proxy reward of one SFT sample "
        f"per prompt ({n_train} training prompts). RL: recipe `rloo`, {steps} steps x "
        f"{per_step} prompts x 8 samples, max 8 new tokens, lr {lr:g}; shapers (registered "
        f"reward transforms on the proxy): {', '.join(shapers)}; '+ KL' = with a k1 KL "
        f"penalty to the SFT policy in the reward (beta {KL_COEF}); held-out gold on "
        f"{len(held)} prompts x 4 samples every {every} steps."
    )
    return ExperimentResult(
        name="par-hacking",
        title="Gold reward under a verbosity-biased proxy: raw, mean/std, log-sigmoid and PAR shaping",
        paper=PAPER,
        arxiv="2502.18770",
        rows=rows,
        setup=setup,
        files=[png],
        data={
            "start": start,
            "curves": {n: [(s, dict(v)) for s, v in c] for n, c in curves.items()},
            "final_gold": {n: final(n) for n in curves},
            "final_length": {n: final(n, "length") for n in curves},
            "reference_gold": ref_gold,
            "shaped": shaped,
            "kl_penalty": kl_end,
        },
    )
