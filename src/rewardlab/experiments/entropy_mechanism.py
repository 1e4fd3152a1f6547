"""``entropy-mechanism``: the entropy change of an RL step follows a covariance term; Clip-Cov
and KL-Cov keep entropy up.

"The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models" (Cui et al.;
arXiv 2505.22617). Abstract: "the change in policy entropy is driven by the covariance between
action probability and the change in logits, which is proportional to its advantage when using
Policy Gradient-like algorithms ... the values of covariance term and entropy differences
matched exactly ... the covariance term stays mostly positive throughout training, further
explaining why policy entropy would decrease monotonically"; Clip-Cov and KL-Cov "encourage
exploration, thus helping policy escape entropy collapse". The paper's propositions were not
read ([not checked]); the forms below are our derivation.

Derivation (softmax over logits z at a state s; first order in the step Δz):

    ΔH(s) ≈ -Cov_{a~π}(log π(a|s), Δz(s, a))                                    (logit form)

With tabular logits, exact policy gradient on J = E_π[r] moves Δz = η π(a|s) A(s, a), and
natural policy gradient moves Δz = η A(s, a), so

    PG:  ΔH ≈ -η Cov_{a~π}(log π, π A)        NPG:  ΔH ≈ -η Cov_{a~π}(log π, A).

Three checks:

1. Tabular softmax bandit, exact: random logits and rewards, one PG or NPG step; measured ΔH
   against both forms (which form belongs to which update).
2. The tiny model (``builtin:tiny`` after SFT on the ``reverse`` task), GRPO through rewardlab's
   trainer stages (:mod:`rl_loop`). Each step, the logits on every state of the batch before
   and after the update give the measured ΔH (token mean over the batch) and the logit-form
   prediction; the batch covariance term is the one Clip-Cov / KL-Cov compute,
   C = mean_t (log π(y_t) - mean log π)(A_t - mean A) over the batch's real tokens
   (rewardlab's registered ``clip_cov`` / ``kl_cov`` use the same product). We also check
   which of A and πA the realized centred logit change of the sampled token follows.
3. GRPO vs the recipes ``clip_cov`` and ``kl_cov``, at their default ratio (2e-4, which
   here selects one token per mini-batch) and at 5% of the tokens, in the same mini-batched
   setting (4 optimizer steps per rollout: KL-Cov's penalty is zero on a fully on-policy
   step): policy entropy and held-out accuracy.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from rewardlab.batch import RolloutBatch
from rewardlab.config import EvalConfig, RunConfig, parse_config
from rewardlab.experiments import ExperimentResult, Row
from rewardlab.experiments.report import new_figure, save_figure
from rewardlab.experiments.rl_loop import Loop, make_loop, train_step, warm_start
from rewardlab.models.logprobs import forward_completion_logits, token_entropy, token_logprobs
from rewardlab.trainers.evaluate import evaluate

PAPER = "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models"
TASK_ARGS = {"min_len": 2, "max_len": 3}


# --------------------------------------------------------------------------- 1. bandit


def softmax_entropy(z: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(z, -1)
    return -(logp.exp() * logp).sum(-1)


def cov_pi(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cov_{a~p}(x(a), y(a)) along the last axis."""
    return (p * x * y).sum(-1) - (p * x).sum(-1) * (p * y).sum(-1)


def bandit_check(n: int, k: int, eta: float, seed: int) -> dict[str, float]:
    """Relative error of each covariance form for one exact PG / NPG step on n random
    softmax bandits of k arms (float64)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=gen, dtype=torch.float64) * 2.0
    r = torch.rand(n, k, generator=gen, dtype=torch.float64)
    p = torch.softmax(z, -1)
    logp = torch.log(p)
    adv = r - (p * r).sum(-1, keepdim=True)
    h0 = softmax_entropy(z)
    out: dict[str, float] = {}
    for update, dz in (("pg", eta * p * adv), ("npg", eta * adv)):
        dh = softmax_entropy(z + dz) - h0
        for form, term in (("pg", p * adv), ("npg", adv)):
            pred = -eta * cov_pi(p, logp, term)
            out[f"{update}_step/{form}_form"] = float((dh - pred).abs().sum() / dh.abs().sum())
    return out


# --------------------------------------------------------------------------- 2. LM measurements


@torch.no_grad()
def state_logits(loop: Loop, batch: RolloutBatch) -> torch.Tensor:
    was = loop.policy.training
    loop.policy.eval()
    z = forward_completion_logits(loop.policy, batch, loop.config.rollout.temperature).float()
    loop.policy.train(was)
    return z


def masked_cov(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> float:
    n = m.sum()
    xc = x - (x * m).sum() / n
    yc = y - (y * m).sum() / n
    return float((xc * yc * m).sum() / n)


def masked_corr(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> float:
    return masked_cov(x, y, m) / math.sqrt(max(masked_cov(x, x, m) * masked_cov(y, y, m), 1e-30))


def measure(step: int, batch: RolloutBatch, loop: Loop, before: torch.Tensor) -> dict[str, float]:
    """Entropy change of this step's update on the batch's states, and its predictors."""
    after = state_logits(loop, batch)
    m = batch.completion_mask.float()
    n = m.sum()
    h0, h1 = token_entropy(before), token_entropy(after)
    logp_all = torch.log_softmax(before, -1)
    p_all = logp_all.exp()
    dz = after - before
    linear = -cov_pi(p_all, logp_all, dz)  # per state
    logp = token_logprobs(before, batch.completion_ids)
    assert batch.advantages is not None
    adv = batch.advantages.float()
    # centred logit change of the sampled token: Δz(y_t) - E_pi[Δz]
    dz_taken = dz.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    centred = dz_taken - (p_all * dz).sum(-1)
    return {
        "H": float((h0 * m).sum() / n),
        "dH": float(((h1 - h0) * m).sum() / n),
        "dH_linear": float((linear * m).sum() / n),
        "cov_A": masked_cov(logp, adv, m),
        "cov_piA": masked_cov(logp, logp.exp() * adv, m),
        "corr_dz_A": masked_corr(centred, adv, m),
        "corr_dz_piA": masked_corr(centred, logp.exp() * adv, m),
    }


def pearson(a: list[float], b: list[float]) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()).clamp(min=1e-30))


def smooth(values: list[float], w: int) -> list[float]:
    return [sum(values[i : i + w]) / w for i in range(0, len(values) - w + 1, w)]


# --------------------------------------------------------------------------- runs


def run_recipe(
    base: Path,
    recipe: str,
    params: dict[str, float],
    seed: int,
    steps: int,
    per_step: int,
    lr: float,
    track: bool,
    heldout: int,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    algo: dict[str, Any] = {"recipe": recipe}
    if params:
        algo["policy_loss"] = {"params": dict(params)}
    if recipe == "grpo":  # like-for-like with the two Cov recipes: only the policy loss differs
        algo["aggregation"] = {"name": "token_mean"}
    config = parse_config(
        RunConfig,
        {
            "seed": seed,
            "model": {"name": str(base)},
            "data": {"task": "reverse", "task_args": TASK_ARGS, "heldout_size": heldout},
            "rollout": {"num_generations": 8, "temperature": 1.0, "max_new_tokens": 6},
            "algorithm": algo,
            "train": {
                "steps": steps,
                "prompts_per_step": per_step,
                "mini_batch_size": per_step * 2,  # 4 optimizer steps per rollout
                "micro_batch_size": per_step * 2,
                "optim": {"lr": lr},
            },
        },
    )
    loop = make_loop(config)

    def before(step: int, batch: RolloutBatch, lp: Loop) -> torch.Tensor:
        return state_logits(lp, batch)

    def plain(step: int, batch: RolloutBatch, lp: Loop, z: torch.Tensor) -> dict[str, float]:
        m = batch.completion_mask.float()
        return {"H": float((token_entropy(z) * m).sum() / m.sum())}

    for step in range(1, steps + 1):
        train_step(loop, step, before, measure if track else plain)
    held = evaluate(
        loop.policy,
        loop.tokenizer,
        loop.prompts.heldout_rows,
        loop.sources,
        EvalConfig(pass_k=1, num_samples=4),
        config.rollout.max_new_tokens,
        seed=seed + 99,
    ).metrics
    return loop.history, held


STRONG = 0.05  # share of tokens for the stronger Clip-Cov / KL-Cov variants


def variants(fast: bool) -> dict[str, tuple[str, dict[str, float], int]]:
    """name -> (recipe, policy-loss params, seeds). The defaults (ratio 2e-4) select
    max(1, int(r N)) = 1 token per mini-batch here; the stronger variants 5% of the tokens."""
    strong = {
        "clip_cov 5%": ("clip_cov", {"clip_cov_ratio": STRONG}, 1),
        "kl_cov 5%": ("kl_cov", {"kl_cov_ratio": STRONG}, 1),
    }
    if fast:
        return {"grpo": ("grpo", {}, 1), **strong}
    return {
        "grpo": ("grpo", {}, 1),
        "clip_cov": ("clip_cov", {}, 1),
        "kl_cov": ("kl_cov", {}, 1),
        **strong,
    }


def tail_mean(history: list[dict[str, float]], key: str, frac: float = 0.2) -> float:
    values = [h[key] for h in history if key in h]
    tail = values[-max(1, int(len(values) * frac)) :]
    return sum(tail) / len(tail)


def run(fast: bool, seed: int, out: Path) -> ExperimentResult:
    steps = 20 if fast else 80
    per_step = 8 if fast else 16
    lr = 3e-4
    bandit = bandit_check(500 if fast else 5000, 20, 1e-3, seed)
    bandit_big = bandit_check(500 if fast else 5000, 20, 0.3, seed)
    with tempfile.TemporaryDirectory(prefix="rewardlab-entropy-") as tmp:
        base = warm_start(
            Path(tmp),
            seed=seed,
            epochs=4,
            lr=1e-3,
            task="reverse",
            task_args=TASK_ARGS,
            num_examples=800,
        )
        runs: dict[str, list[tuple[list[dict[str, float]], dict[str, float]]]] = {}
        for name, (recipe, params, n_seeds) in variants(fast).items():
            runs[name] = [
                run_recipe(
                    base, recipe, params, s, steps, per_step, lr, name == "grpo", 32 if fast else 100
                )
                for s in range(seed, seed + n_seeds)
            ]

    track = runs["grpo"][0][0]
    dh = [h["dH"] for h in track]
    lin = [h["dH_linear"] for h in track]
    cov_a = [h["cov_A"] for h in track]
    cov_pia = [h["cov_piA"] for h in track]
    w = 5 if fast else 10
    r_lin = pearson(dh, lin)
    r_cov = pearson(dh, [-c for c in cov_a])
    r_cov_pi = pearson(dh, [-c for c in cov_pia])
    r_cov_smooth = pearson(smooth(dh, w), [-c for c in smooth(cov_a, w)])
    pos = sum(c > 0 for c in cov_a) / len(cov_a)
    down = sum(d < 0 for d in dh) / len(dh)
    corr_a = sum(h["corr_dz_A"] for h in track) / len(track)
    corr_pia = sum(h["corr_dz_piA"] for h in track) / len(track)

    def summary(recipe: str) -> dict[str, float]:
        hist = [h for h, _ in runs[recipe]]
        held = [e for _, e in runs[recipe]]
        k = len(hist)
        return {
            "H_mean": sum(sum(x["H"] for x in h) / len(h) for h in hist) / k,
            "H_end": sum(tail_mean(h, "H") for h in hist) / k,
            "H_start": sum(h[0]["H"] for h in hist) / k,
            "reward_end": sum(tail_mean(h, "reward") for h in hist) / k,
            "acc": sum(e["eval/accuracy"] for e in held) / k,
            "sampled": sum(e["eval/reward_sampled"] for e in held) / k,
            "per_seed_H": [sum(x["H"] for x in h) / len(h) for h in hist],  # type: ignore[dict-item]
        }

    summaries = {r: summary(r) for r in runs}

    # ---------------------------------------------------------------- figure
    fig, axes = new_figure(3, width=4.1)
    from matplotlib.ticker import NullFormatter  # after new_figure has set the Agg backend

    ax = axes[0, 0]
    xs = list(range(1, len(dh) + 1))
    ax.plot(xs, dh, "-", lw=0.8, color="k", label="measured ΔH")
    ax.plot(xs, lin, "-", lw=0.8, color="tab:orange", label="-Cov_π(log π, Δz) (first order)")
    scale = sum(abs(d) for d in dh) / max(sum(abs(c) for c in cov_a), 1e-12)
    ax.plot(xs, [-c * scale for c in cov_a], "-", lw=0.8, color="tab:blue", label=f"-Cov(log π, A) x {scale:.2g}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("GRPO step")
    ax.set_title("entropy change per step (batch states)", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[0, 1]
    colors = {
        "grpo": "tab:red",
        "clip_cov": "tab:olive",
        "kl_cov": "tab:cyan",
        "clip_cov 5%": "tab:green",
        "kl_cov 5%": "tab:blue",
    }
    for name, items in runs.items():
        for i, (hist, _) in enumerate(items):
            ax.plot([h["H"] for h in hist], "-", lw=0.8, color=colors[name], alpha=1.0 if i == 0 else 0.5, label=f"{name} ({len(items)})" if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("policy entropy (token mean)")
    ax.set_yscale("log")
    ax.set_title("entropy (seeds per variant in brackets)", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[0, 2]
    for name, items in runs.items():
        for i, (hist, _) in enumerate(items):
            ax.plot([h["H"] for h in hist], [h["reward"] for h in hist], ".", ms=2, color=colors[name], alpha=0.6, label=name if i == 0 else None)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("policy entropy")
    ax.set_ylabel("training reward")
    ax.set_title("reward vs entropy", fontsize=9)
    ax.legend(fontsize=6)
    png = save_figure(fig, out / "entropy-mechanism.png")

    # ---------------------------------------------------------------- rows
    g = summaries["grpo"]

    def lifted(names: tuple[str, ...]) -> bool:
        return all(summaries[n]["H_mean"] >= 1.1 * g["H_mean"] for n in names)

    def entropies(names: tuple[str, ...]) -> str:
        return " / ".join(f"{summaries[n]['H_mean']:.3f}" for n in ("grpo", *names))

    def per_seed(names: tuple[str, ...]) -> str:
        return "; ".join(
            f"{n} " + ", ".join(f"{v:.3f}" for v in summaries[n]["per_seed_H"])  # type: ignore[union-attr]
            for n in ("grpo", *names)
        )

    default = tuple(n for n in ("clip_cov", "kl_cov") if n in summaries)
    strong = ("clip_cov 5%", "kl_cov 5%")
    rows = [
        Row(
            "tabular softmax bandit, one exact step (eta 1e-3): relative error of the PG form "
            "-eta Cov(log π, πA) / of the NPG form -eta Cov(log π, A)",
            f"PG step: {bandit['pg_step/pg_form']:.1e} / {bandit['pg_step/npg_form']:.2f}; "
            f"NPG step: {bandit['npg_step/pg_form']:.2f} / {bandit['npg_step/npg_form']:.1e}",
            "entropy change is driven by Cov(log-prob, logit change), proportional to the "
            "advantage under PG-like updates (abstract); PG: πA, NPG: A [our derivation; the "
            "paper's propositions not checked]",
            bandit["pg_step/pg_form"] < 0.01 and bandit["npg_step/npg_form"] < 0.01,
            f"each form matches its own update to first order and not the other's; at eta 0.3 the "
            f"errors grow to {bandit_big['pg_step/pg_form']:.2f} (PG) and "
            f"{bandit_big['npg_step/npg_form']:.2f} (NPG): second-order terms",
        ),
        Row(
            "tiny LM, GRPO: per-step ΔH vs the first-order logit form -Cov_π(log π, Δz) "
            "(Pearson r over steps)",
            f"r = {r_lin:.2f}; mean ΔH {sum(dh) / len(dh):.4f}, predicted {sum(lin) / len(lin):.4f}",
            "the values of covariance term and entropy differences matched exactly (abstract)",
            r_lin > 0.5,
            "Δz = the realized logit change on the batch's states (4 Adam steps per rollout); "
            "the gap is second order in Δz",
        ),
        Row(
            "tiny LM, GRPO: per-step ΔH vs -C, C = batch Cov(log π(y_t), A_t) (Clip-Cov's term); "
            f"raw / {w}-step averages",
            f"r = {r_cov:.2f} / {r_cov_smooth:.2f} (with πA in place of A: r = {r_cov_pi:.2f})",
            "the values of covariance term and entropy differences matched exactly (abstract)",
            r_cov > 0.5,
            "agree = r > 0.5 on single steps. From Δz to A assumes tabular logits and a plain "
            "gradient step; here the logits share parameters and Adam rescales each parameter, "
            "which scatters single steps around the trend",
        ),
        Row(
            "tiny LM, GRPO: steps with C > 0 / steps where entropy fell",
            f"{pos:.0%} / {down:.0%} of {len(dh)}; entropy {g['H_start']:.2f} -> {g['H_end']:.2f}",
            "the covariance term stays mostly positive; entropy decreases monotonically (abstract)",
            pos > 0.8 and down > 0.7,
            "agree = C > 0 in > 80% and ΔH < 0 in > 70% of steps",
        ),
        Row(
            "tiny LM, GRPO: which advantage form the centred logit change of the sampled token "
            "follows: corr with A / with πA (mean over steps)",
            f"{corr_a:.2f} / {corr_pia:.2f}",
            "(PG in tabular logits: πA; NPG: A; Adam is neither)",
            None,
            "Adam's per-parameter scaling makes the step more NPG-like (A) when the A correlation is higher",
        ),
        *(
            [
                Row(
                    "mean policy entropy over the run: GRPO / Clip-Cov / KL-Cov, default ratio "
                    "2e-4",
                    entropies(default) + f" (start {g['H_start']:.3f}, GRPO's end {g['H_end']:.3f})",
                    "Clip-Cov and KL-Cov encourage exploration, helping the policy escape entropy "
                    "collapse (abstract)",
                    lifted(default),
                    "agree = both at least 10% above GRPO. With a few hundred tokens per "
                    "mini-batch, max(1, int(2e-4 N)) = 1 token per mini-batch is clipped or "
                    "penalized. Per seed: " + per_seed(default),
                )
            ]
            if default
            else []
        ),
        Row(
            f"mean policy entropy over the run: GRPO / Clip-Cov / KL-Cov with {STRONG:.0%} of the "
            "tokens selected",
            entropies(strong) + f" (start {g['H_start']:.3f})",
            "Clip-Cov and KL-Cov encourage exploration, helping the policy escape entropy "
            "collapse (abstract)",
            lifted(strong),
            "agree = both at least 10% above GRPO. Per seed: " + per_seed(strong),
        ),
        Row(
            "held-out greedy accuracy / training reward over the last 20% of steps: "
            + " / ".join(summaries),
            " / ".join(f"{summaries[n]['acc']:.3f}" for n in summaries)
            + "; "
            + " / ".join(f"{summaries[n]['reward_end']:.3f}" for n in summaries),
            "... and achieve better downstream performance (abstract; LLM-scale, not reproduced)",
            None,
            "comparable reward is the condition for the entropy rows; held-out sampled reward: "
            + " / ".join(f"{summaries[n]['sampled']:.3f}" for n in summaries),
        ),
    ]
    setup = (
        f"`builtin:tiny` after SFT on `reverse` (2-3 letters, 800 demonstrations, 4 epochs); RL on fresh prompts, {steps} steps x "
        f"{per_step} prompts x 8 samples, lr {lr:g}, mini-batches of {per_step * 2} sequences (4 "
        "Adam steps per rollout), recipes `grpo` (aggregation set to `token_mean` like the two "
        "Cov recipes), `clip_cov` and `kl_cov` with their default parameters and with "
        f"{STRONG:.0%} of the tokens selected (ratio {STRONG}); entropy and covariances measured "
        "on each step's batch before and after its update. Bandit: 20 "
        f"arms, logits N(0, 4), rewards U(0, 1), {500 if fast else 5000} instances, float64."
    )
    return ExperimentResult(
        name="entropy-mechanism",
        title="Entropy change vs the covariance term; entropy under GRPO, Clip-Cov and KL-Cov",
        paper=PAPER,
        arxiv="2505.22617",
        rows=rows,
        setup=setup,
        files=[png],
        data={
            "bandit": bandit,
            "bandit_big": bandit_big,
            "r_linear": r_lin,
            "r_cov": r_cov,
            "r_cov_smooth": r_cov_smooth,
            "positive_cov": pos,
            "entropy_down": down,
            "summaries": summaries,
            "track": track,
        },
    )
