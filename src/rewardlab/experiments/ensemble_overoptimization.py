"""``ensemble-overoptimization``: conservative reward-model ensembles against best-of-n overoptimization.

"Reward Model Ensembles Help Mitigate Overoptimization" (Coste, Anwar, Kirk, Krueger; arXiv
2310.02743). Abstract: in the synthetic gold-reward setup of Gao et al. (2023), with 25% label
noise added, "conservative optimization practically eliminates overoptimization and improves
performance by up to 70% for BoN sampling", with and without label noise. How the paper
computes the 70% and its largest n were not read ([not checked]). For PPO we know the claim
only from the project digest's paraphrase of the abstract ([digest, 2nd-hand]): conservative
optimization always reduces overoptimization and beats a single RM, and with a small KL penalty
it prevents overoptimization at no cost.

Our synthetic version (no language model; the "responses" are points of a feature space):

* responses x in R^8 drawn from a base policy: 95% N(0, I), 5% N(0, 9 I) (rare, unusual
  responses; the proxies see few of them in training, as an LLM's reward model sees little
  gibberish);
* the gold reward is known: g(x) = w.x - 0.1 |x|^2 (w a random unit vector), so the best
  responses lie at a moderate distance along w and far-out responses are bad;
* proxy reward models: tiny MLPs (8 -> 32 -> 32 -> 1, ReLU), K = 5 members trained on the same
  4000 gold-labelled pairs of base samples with different initialization seeds (Coste et al.'s
  ensembles also differ by seed only), 25% of the labels flipped, full-batch Adam on
  rewardlab's ``bradley_terry`` loss. Each member's rewards are standardized over the
  candidates (the Bradley-Terry loss fixes neither their offset nor their scale);
* best-of-n: for each of R "prompts" the base policy is sampled n_max = 10^4 times once, the
  first n candidates are scored by one proxy (a single member; the curve is the mean over the
  K members) or by an ensemble aggregation of the registered ``ensemble_aggregation`` axis
  (``mean``, ``min`` = worst-case optimization WCO, ``uwo`` = mean - coef * variance with
  coef 1, ``mean_minus_std``), and the gold reward of the argmax is recorded;
  KL_bon = log n - (n - 1)/n (``rewardlab.selection.bon_kl``).

* a short RL run in each noisy world: a policy of the base policy's form (a two-component
  Gaussian mixture with a shared learnable mean, learnable per-dimension log-stds of each
  component and a learnable mixture weight), initialized at the base policy, which is the
  reference. It is trained for a few hundred steps on the aggregated proxy reward (each single
  member, ``mean``, ``min``, ``uwo``, ``mean_minus_std``) with REINFORCE: groups of G samples,
  the registered ``rloo`` advantage and the registered ``pg`` policy loss (one on-policy update
  per batch, so PPO's clipping would be inactive). The KL penalty goes into the reward, as in
  RLHF's PPO: r - beta * k1 with k1 = log pi(x) - log pi_base(x) (registered ``k1``), once with
  beta = 0 (pure optimization, the curve traces gold against KL along training) and once with a
  small beta. Gold under the policy is exact (E g = w.mu - 0.1 (|mu|^2 + E sum sigma^2));
  KL(pi || pi_base) is a Monte Carlo mean of k1 over fresh samples (no closed form for
  mixtures).

Gold is reported as the gain over the base policy's mean gold (gold units; the best possible
response is about 3.6 above that mean), averaged over independent worlds (gold direction, data,
ensemble).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from rewardlab.algorithms import ADVANTAGES, KL_ESTIMATORS, POLICY_LOSSES
from rewardlab.experiments import ExperimentResult, Row
from rewardlab.experiments.report import new_figure, save_figure
from rewardlab.reward_models.ensemble import aggregate
from rewardlab.reward_models.losses import bradley_terry
from rewardlab.selection import best_of_n, bon_kl

DIM = 8
WIDE_SHARE, WIDE_SCALE = 0.05, 3.0
MEMBERS = 5
# (label, aggregation name, params); "single" is each member alone, averaged over members.
AGGREGATIONS = [
    ("mean", "mean", {}),
    ("WCO (min)", "min", {}),
    ("UWO (coef 1)", "uwo", {"coef": 1.0}),
    ("mean - std", "mean_minus_std", {}),
]
UWO_SWEEP = (0.1, 0.3, 1.0, 3.0)
RL_BETAS = (0.0, 0.1)  # KL penalty in the reward: none, and a small one
RL_GROUP = 8  # samples per rloo group
RL_LR = 0.03
RL_STEPS_FAST = 200
RL_EVAL_EVERY, RL_EVAL_SAMPLES = 10, 2048


def sample_base(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` responses of the base policy [n, DIM] and whether each is from the wide part."""
    wide = torch.rand(n, generator=gen) < WIDE_SHARE
    x = torch.randn(n, DIM, generator=gen) * torch.where(wide, WIDE_SCALE, 1.0).unsqueeze(1)
    return x, wide


def gold_reward(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x @ w - 0.1 * (x * x).sum(-1)


def train_member(
    win: torch.Tensor, lose: torch.Tensor, seed: int, steps: int, hidden: int = 32
) -> torch.nn.Module:
    """A tiny MLP reward model trained with rewardlab's Bradley-Terry loss (full batch)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(DIM, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = bradley_terry(net(win)[:, 0], net(lose)[:, 0]).mean()
        loss.backward()
        opt.step()
    return net


def nested_best(scores: torch.Tensor, ns: list[int]) -> torch.Tensor:
    """[len(ns), R] index of the best of the first n candidates of each prompt (ties: first)."""
    return torch.stack([scores[:, :n].argmax(1) for n in ns])


# --------------------------------------------------------------------------- RL run


def mixture_log_prob(
    x: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor, logit: torch.Tensor
) -> torch.Tensor:
    """log pi(x) [R, N] of R two-component Gaussian mixtures at x [R, N, DIM]: shared mean mu
    [R, DIM], per-component diagonal log-stds log_std [R, 2, DIM], log-odds of component 1 [R]."""
    z = (x.unsqueeze(2) - mu[:, None, None, :]) / log_std.exp()[:, None]
    comp = (-0.5 * z * z - log_std[:, None] - 0.5 * math.log(2 * math.pi)).sum(-1)  # [R, N, 2]
    log_w = torch.stack([F.logsigmoid(-logit), F.logsigmoid(logit)], -1)
    return torch.logsumexp(comp + log_w[:, None, :], -1)


def base_params(runs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The base policy as mixture parameters (mu, log_std, logit) for ``runs`` copies."""
    log_std = torch.stack([torch.zeros(DIM), torch.full((DIM,), math.log(WIDE_SCALE))])
    return (
        torch.zeros(runs, DIM),
        log_std.repeat(runs, 1, 1),
        torch.full((runs,), math.log(WIDE_SHARE / (1 - WIDE_SHARE))),
    )


def sample_mixture(
    n: int, mu: torch.Tensor, log_std: torch.Tensor, logit: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """n samples [R, n, DIM] of each of the R mixtures (no gradient: REINFORCE, not the
    reparameterization trick)."""
    mu, log_std, logit = mu.detach(), log_std.detach(), logit.detach()
    wide = torch.rand(mu.shape[0], n, generator=gen) < torch.sigmoid(logit)[:, None]
    std = torch.where(wide.unsqueeze(-1), log_std[:, 1, None].exp(), log_std[:, 0, None].exp())
    return mu[:, None, :] + std * torch.randn(mu.shape[0], n, DIM, generator=gen)


def mixture_gold(
    mu: torch.Tensor, log_std: torch.Tensor, logit: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """Exact E_pi g(x) [R] = w.mu - 0.1 (|mu|^2 + sum_c p_c sum_d sigma_cd^2)."""
    p = torch.sigmoid(logit)
    var = log_std.mul(2).exp().sum(-1)  # [R, 2]
    return mu @ w - 0.1 * ((mu * mu).sum(-1) + (1 - p) * var[:, 0] + p * var[:, 1])


def run_rl(
    nets: list[torch.nn.Module],
    loc: torch.Tensor,
    scale: torch.Tensor,
    w: torch.Tensor,
    seed: int,
    steps: int,
    groups: int,
) -> dict[str, dict[str, list[float]]]:
    """RL against each aggregated proxy for every beta of RL_BETAS, all runs batched.

    Returns, per "label|beta", the curves logged every RL_EVAL_EVERY steps: exact gold gain over
    the base policy's mean, Monte Carlo KL(pi || pi_base), mean aggregated (standardized) proxy
    reward of the policy's samples, and the norm of the policy's mean and its component along w.
    The single-member curves are averaged over the members.
    """
    gen = torch.Generator().manual_seed(seed)
    specs: list[tuple[str, str, dict[str, float], int, float]] = []  # label, agg, params, k, beta
    for beta in RL_BETAS:
        specs += [("single", "", {}, k, beta) for k in range(MEMBERS)]
        specs += [(label, name, params, -1, beta) for label, name, params in AGGREGATIONS]
    runs = len(specs)
    n = groups * RL_GROUP
    mu, log_std, logit = (t.clone().requires_grad_() for t in base_params(runs))
    ref = tuple(t.clone() for t in base_params(runs))
    opt = torch.optim.Adam([mu, log_std, logit], lr=RL_LR)
    group = torch.arange(runs * groups).repeat_interleave(RL_GROUP)
    mask = torch.ones(runs * n, 1)
    base_gold = float(mixture_gold(*ref, w)[0])
    logs: list[dict[str, torch.Tensor]] = []

    def proxy(x: torch.Tensor) -> torch.Tensor:
        """Aggregated standardized proxy reward [R, N] of each run's samples x [R, N, DIM]."""
        with torch.no_grad():
            member = torch.stack([net(x.reshape(-1, DIM))[:, 0] for net in nets])
            member = ((member - loc[:, None]) / scale[:, None]).view(MEMBERS, runs, -1)
        return torch.stack(
            [
                member[k, r] if label == "single" else aggregate(member[:, r], name, params)
                for r, (label, name, params, k, _) in enumerate(specs)
            ]
        )

    for step in range(steps + 1):
        if step % RL_EVAL_EVERY == 0 or step == steps:
            with torch.no_grad():
                xe = sample_mixture(RL_EVAL_SAMPLES, mu, log_std, logit, gen)
                k1 = KL_ESTIMATORS.call(
                    "k1",
                    {"logp": mixture_log_prob(xe, mu, log_std, logit),
                     "ref_logp": mixture_log_prob(xe, *ref)},
                    {},
                )
                logs.append({
                    "gold": mixture_gold(mu, log_std, logit, w) - base_gold,
                    "kl": k1.mean(1),
                    "proxy": proxy(xe).mean(1),
                    "mean_norm": mu.norm(dim=1),  # the gold optimum is at 5w, |5w| = 5
                    "along_w": mu @ w,
                })
        if step == steps:
            break
        x = sample_mixture(n, mu, log_std, logit, gen)
        logp = mixture_log_prob(x, mu, log_std, logit)
        with torch.no_grad():
            k1 = KL_ESTIMATORS.call("k1", {"logp": logp, "ref_logp": mixture_log_prob(x, *ref)}, {})
            beta = torch.tensor([spec[4] for spec in specs])
            reward = proxy(x) - beta[:, None] * k1
        adv = ADVANTAGES.call(
            "rloo", {"rewards": reward.reshape(-1), "group": group, "mask": mask}, {}
        ).view(runs, n)
        loss, _ = POLICY_LOSSES.call(
            "pg", {"logp": logp, "old_logp": logp.detach(), "advantages": adv}, {}
        )
        opt.zero_grad()
        loss.mean(1).sum().backward()  # each run's own mean loss; the runs share no parameter
        opt.step()

    curves: dict[str, dict[str, list[float]]] = {}
    for key in logs[0]:
        table = torch.stack([log[key] for log in logs], 1)  # [R, T]
        for beta in RL_BETAS:
            rows = [r for r, spec in enumerate(specs) if spec[4] == beta]
            single = [r for r in rows if specs[r][0] == "single"]
            curves.setdefault(f"single|{beta:g}", {})[key] = table[single].mean(0).tolist()
            for r in rows:
                if specs[r][0] != "single":
                    curves.setdefault(f"{specs[r][0]}|{beta:g}", {})[key] = table[r].tolist()
    return curves


def run_world(
    seed: int,
    noise: float,
    pairs: int,
    steps: int,
    prompts: int,
    n_max: int,
    ns: list[int],
    rl_steps: int = 0,
    rl_groups: int = 0,
) -> dict[str, object]:
    """One world: gold direction, noisy training pairs, K members, best-of-n curves and (with
    ``rl_steps``) the RL curves."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(DIM, generator=gen)
    w = w / w.norm()
    xa, _ = sample_base(pairs, gen)
    xb, _ = sample_base(pairs, gen)
    a_wins = (gold_reward(xa, w) > gold_reward(xb, w)) ^ (torch.rand(pairs, generator=gen) < noise)
    win = torch.where(a_wins.unsqueeze(1), xa, xb)
    lose = torch.where(a_wins.unsqueeze(1), xb, xa)
    nets = [train_member(win, lose, 1000 * seed + k, steps) for k in range(MEMBERS)]

    ta, _ = sample_base(4000, gen)
    tb, _ = sample_base(4000, gen)
    with torch.no_grad():
        truth = gold_reward(ta, w) > gold_reward(tb, w)
        accuracy = [float(((n(ta)[:, 0] > n(tb)[:, 0]) == truth).float().mean()) for n in nets]
        x, wide = sample_base(prompts * n_max, gen)
        gold = gold_reward(x, w).view(prompts, n_max)
        member = torch.stack([n(x)[:, 0] for n in nets]).view(MEMBERS, prompts, n_max)
    loc, scale = member.mean((1, 2)), member.std((1, 2))  # per member, over base samples
    member = (member - loc[:, None, None]) / scale[:, None, None]
    wide = wide.view(prompts, n_max)
    g_mean = float(gold.mean())

    def gains(index: torch.Tensor) -> list[float]:
        picked = gold.gather(1, index.T).T  # [len(ns), R]
        return (picked.mean(1) - g_mean).tolist()

    curves: dict[str, list[float]] = {}
    singles = [nested_best(member[k], ns) for k in range(MEMBERS)]
    curves["single"] = torch.tensor([gains(i) for i in singles]).mean(0).tolist()
    proxy_single = torch.stack(
        [member[k].gather(1, singles[k].T).T.mean(1) for k in range(MEMBERS)]
    ).mean(0)
    wide_share: dict[str, float] = {
        "single": float(
            torch.stack([wide.gather(1, i[-1:].T).float().mean() for i in singles]).mean()
        )
    }
    flat = member.reshape(MEMBERS, -1)
    check = 0
    for label, name, params in AGGREGATIONS:
        score = aggregate(flat, name, params).view(prompts, n_max)
        index = nested_best(score, ns)
        curves[label] = gains(index)
        wide_share[label] = float(wide.gather(1, index[-1:].T).float().mean())
        if label == "WCO (min)":  # the vectorized argmax is the registered best_of_n selector
            for p in range(min(prompts, 3)):
                check += int(best_of_n(score[p, : ns[-1]]) != int(index[-1, p]))
    uwo_final = {}
    for coef in UWO_SWEEP:
        score = aggregate(flat, "uwo", {"coef": coef}).view(prompts, n_max)
        uwo_final[coef] = gains(nested_best(score, ns[-1:]))[0]
    curves["gold (oracle)"] = gains(nested_best(gold, ns))
    rl = run_rl(nets, loc, scale, w, 7919 + seed, rl_steps, rl_groups) if rl_steps else {}
    return {
        "rl": rl,
        "curves": curves,
        "proxy_single": proxy_single.tolist(),
        "wide_share": wide_share,
        "uwo_final": uwo_final,
        "accuracy": sum(accuracy) / len(accuracy),
        "selector_mismatch": check,
    }


def average_worlds(worlds: list[dict[str, object]]) -> dict[str, object]:
    def mean_list(lists: list[list[float]]) -> list[float]:
        return torch.tensor(lists).mean(0).tolist()

    labels = list(worlds[0]["curves"])  # type: ignore[arg-type]
    rl: dict[str, dict[str, list[float]]] = worlds[0]["rl"]  # type: ignore[assignment]
    return {
        "rl": {
            run: {
                key: mean_list([w["rl"][run][key] for w in worlds])  # type: ignore[index]
                for key in rl[run]
            }
            for run in rl
        },
        "curves": {
            lab: mean_list([w["curves"][lab] for w in worlds])  # type: ignore[index]
            for lab in labels
        },
        "proxy_single": mean_list([w["proxy_single"] for w in worlds]),  # type: ignore[misc]
        "wide_share": {
            lab: sum(w["wide_share"][lab] for w in worlds) / len(worlds)  # type: ignore[index]
            for lab in worlds[0]["wide_share"]  # type: ignore[union-attr]
        },
        "uwo_final": {
            c: sum(w["uwo_final"][c] for w in worlds) / len(worlds)  # type: ignore[index]
            for c in UWO_SWEEP
        },
        "accuracy": sum(w["accuracy"] for w in worlds) / len(worlds),  # type: ignore[misc]
        "selector_mismatch": sum(w["selector_mismatch"] for w in worlds),  # type: ignore[misc]
    }


def summary(curve: list[float], ns: list[int]) -> dict[str, float]:
    peak = max(range(len(curve)), key=lambda i: curve[i])
    return {
        "peak": curve[peak],
        "peak_n": float(ns[peak]),
        "final": curve[-1],
        "drop": curve[peak] - curve[-1],
    }


def rl_summary(curves: dict[str, list[float]]) -> dict[str, float]:
    """Peak and final gold gain of one RL run (or average of runs) with the KL at each."""
    gold, kl = curves["gold"], curves["kl"]
    peak = max(range(len(gold)), key=lambda i: gold[i])
    return {
        "peak": gold[peak],
        "peak_kl": kl[peak],
        "final": gold[-1],
        "final_kl": kl[-1],
        "drop": gold[peak] - gold[-1],
        "proxy_start": curves["proxy"][0],
        "proxy_final": curves["proxy"][-1],
        "mean_norm": curves["mean_norm"][-1],
        "along_w": curves["along_w"][-1],
    }


def run(fast: bool, seed: int, out: Path) -> ExperimentResult:
    torch.manual_seed(seed)
    if fast:
        worlds_noisy, worlds_clean, pairs, steps, prompts, n_max = 1, 1, 2000, 150, 40, 2000
        rl_steps, rl_groups = RL_STEPS_FAST, 16
    else:
        worlds_noisy, worlds_clean, pairs, steps, prompts, n_max = 4, 2, 4000, 200, 250, 10000
        rl_steps, rl_groups = 300, 32
    ns = sorted({min(2**i, n_max) for i in range(int(math.log2(n_max)) + 1)} | {n_max})
    kls = [bon_kl(n) for n in ns]
    noisy_worlds = [
        run_world(100 * seed + i, 0.25, pairs, steps, prompts, n_max, ns, rl_steps, rl_groups)
        for i in range(worlds_noisy)
    ]
    noisy = average_worlds(noisy_worlds)
    clean = average_worlds(
        [
            run_world(100 * seed + 50 + i, 0.0, pairs, steps, prompts, n_max, ns)
            for i in range(worlds_clean)
        ]
    )
    cn: dict[str, list[float]] = noisy["curves"]  # type: ignore[assignment]
    cc: dict[str, list[float]] = clean["curves"]  # type: ignore[assignment]
    s = {lab: summary(c, ns) for lab, c in cn.items()}
    sc = {lab: summary(c, ns) for lab, c in cc.items()}
    single, wco, uwo_, mean_ = s["single"], s["WCO (min)"], s["UWO (coef 1)"], s["mean"]
    rl_curves: dict[str, dict[str, list[float]]] = noisy["rl"]  # type: ignore[assignment]
    rl = {run: rl_summary(c) for run, c in rl_curves.items()}
    rl_per_world = [
        {run: rl_summary(c) for run, c in w["rl"].items()} for w in noisy_worlds  # type: ignore[attr-defined]
    ]
    b0, b1 = (f"{b:g}" for b in RL_BETAS)
    r_single, r_wco, r_uwo = (rl[f"{lab}|{b0}"] for lab in ("single", "WCO (min)", "UWO (coef 1)"))
    k_single, k_wco, k_uwo = (rl[f"{lab}|{b1}"] for lab in ("single", "WCO (min)", "UWO (coef 1)"))
    r_mean, k_mean = rl[f"mean|{b0}"], rl[f"mean|{b1}"]
    # "always": in every world, WCO and UWO fall less than the single RM and end above it
    worlds_ok = sum(
        all(
            w[f"{lab}|{b0}"]["drop"] < w[f"single|{b0}"]["drop"]
            and w[f"{lab}|{b0}"]["final"] > w[f"single|{b0}"]["final"]
            for lab in ("WCO (min)", "UWO (coef 1)")
        )
        for w in rl_per_world
    )

    # ------------------------------------------------------------------ figure
    fig, axes = new_figure(3, 2)
    styles = {"single": ("-", "C3"), "mean": ("-", "C1"), "WCO (min)": ("-", "C0"),
              "UWO (coef 1)": ("-", "C2"), "mean - std": ("--", "C4"), "gold (oracle)": (":", "gray")}
    for ax, curves, title in (
        (axes[0, 0], cn, "25% label noise"),
        (axes[0, 2], cc, "no label noise"),
    ):
        for lab, curve in curves.items():
            ax.plot(kls, curve, styles[lab][0], label=lab, color=styles[lab][1])
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("KL_bon = log n - (n-1)/n  (nats)")
        ax.set_ylabel("gold of the selected - base mean")
        ax.set_title(f"best-of-n, n = 1..{n_max}: {title}", fontsize=9)
        ax.legend(fontsize=6)
    ax = axes[0, 1]
    ax.plot(kls, noisy["proxy_single"], color="C7", label="proxy score, single RM (member std)")  # type: ignore[arg-type]
    ax.plot(kls, cn["single"], color="C3", label="gold gain, single RM")
    ax.plot(kls, cn["WCO (min)"], color="C0", label="gold gain, WCO")
    ax.set_xlabel("KL_bon (nats)")
    ax.set_title("best-of-n, single RM: proxy keeps rising, gold falls", fontsize=9)
    ax.legend(fontsize=7)
    for ax, beta in ((axes[1, 0], b0), (axes[1, 2], b1)):
        for lab in ("single", *(a[0] for a in AGGREGATIONS)):
            curve = rl_curves[f"{lab}|{beta}"]
            ax.plot(curve["kl"], curve["gold"], styles[lab][0], label=lab, color=styles[lab][1])
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("KL(policy || base), Monte Carlo (nats)")
        ax.set_ylabel("gold of the policy - base mean")
        ax.set_title(f"RL (REINFORCE + rloo, {rl_steps} steps), KL penalty beta = {beta}", fontsize=9)
        ax.legend(fontsize=6)
    bottom = min(min(rl_curves[f"{lab}|{beta}"]["gold"]) for lab in ("WCO (min)", "single")
                 for beta in (b0, b1))
    for ax in (axes[1, 0], axes[1, 2]):
        ax.set_ylim(max(bottom, -6.0) - 0.3, 3.2)  # the single RM's curve falls off-scale
    ax = axes[1, 1]
    curve = rl_curves[f"single|{b0}"]
    ax.plot(curve["kl"], curve["proxy"], color="C7", label="proxy reward, single RM (member std)")
    ax.plot(curve["kl"], curve["gold"], color="C3", label="gold gain, single RM")
    ax.plot(rl_curves[f"WCO (min)|{b0}"]["kl"], rl_curves[f"WCO (min)|{b0}"]["gold"], color="C0",
            label="gold gain, WCO")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("KL(policy || base) (nats)")
    ax.set_title(f"RL, beta = {b0}: single RM's proxy rises, gold falls", fontsize=9)
    ax.legend(fontsize=7)
    png = save_figure(fig, out / "ensemble-overoptimization.png")

    # ------------------------------------------------------------------ rows
    wide: dict[str, float] = noisy["wide_share"]  # type: ignore[assignment]
    uwo_final: dict[float, float] = noisy["uwo_final"]  # type: ignore[assignment]

    def practically_none(stat: dict[str, float]) -> bool:
        return stat["drop"] <= 0.1 * max(stat["peak"], 1e-9)

    best_cons = max(wco["final"], uwo_["final"])
    vs_peak = (best_cons - single["peak"]) / single["peak"]
    vs_final = (
        f"{100 * (best_cons - single['final']) / single['final']:+.0f}%"
        if single["final"] > 0.05
        else "not defined (the single RM ends at or below the base policy)"
    )
    rows = [
        Row(
            f"single proxy RM (mean over the {MEMBERS} members), 25% label noise: gold gain at its "
            f"best n / at n = {n_max}",
            f"{single['peak']:+.2f} at n = {int(single['peak_n'])} / {single['final']:+.2f}",
            "a single proxy RM overoptimizes under best-of-n: gold rises, then falls while the "
            "proxy keeps rising (the setting's premise, from Gao et al. 2023)",
            single["drop"] > 0.25 * abs(single["peak"]),
            f"proxy score of the selected keeps rising ({noisy['proxy_single'][0]:+.2f} -> "  # type: ignore[index]
            f"{noisy['proxy_single'][-1]:+.2f} std); at n = {n_max} "  # type: ignore[index]
            f"{100 * wide['single']:.0f}% of its picks come from the rare wide part of the base "
            f"policy ({100 * WIDE_SHARE:.0f}% of samples); members' held-out pair accuracy "
            f"against gold {noisy['accuracy']:.2f}",
        ),
        Row(
            f"WCO (min) and UWO: drop of gold from its peak to n = {n_max}",
            f"WCO {wco['drop']:.2f} (peak {wco['peak']:+.2f} at n = {int(wco['peak_n'])}); "
            f"UWO {uwo_['drop']:.2f} (peak {uwo_['peak']:+.2f} at n = {int(uwo_['peak_n'])}); "
            f"single RM {single['drop']:.2f}",
            "conservative optimization practically eliminates overoptimization for BoN (abstract)",
            practically_none(wco) and practically_none(uwo_),
            "agree = drop ≤ 10% of the aggregation's own peak gain; picks from the rare wide part at "
            f"n = {n_max}: WCO {100 * wide['WCO (min)']:.1f}%, UWO {100 * wide['UWO (coef 1)']:.1f}%",
        ),
        Row(
            f"gold gain at the largest n = {n_max} (KL_bon = {kls[-1]:.2f} nats): single / mean / "
            "WCO / UWO / mean - std",
            f"{single['final']:+.2f} / {mean_['final']:+.2f} / {wco['final']:+.2f} / "
            f"{uwo_['final']:+.2f} / {s['mean - std']['final']:+.2f}",
            "conservative optimization improves BoN performance by up to 70% (abstract; how the "
            "percentage is computed [not checked]); digest: ~30% without, ~75% with label noise "
            "[digest, 2nd-hand]",
            min(wco["final"], uwo_["final"]) > single["final"],
            f"improvement of the better of WCO/UWO over the single RM at n = {n_max}: "
            f"{best_cons - single['final']:+.2f} gold; relative to the single RM's best value at "
            f"any n (n = {int(single['peak_n'])}): {100 * vs_peak:+.0f}%; relative to its value at "
            f"n = {n_max}: {vs_final}",
        ),
        Row(
            "mean-of-ensemble (no penalty), 25% label noise: drop from peak to n_max",
            f"{mean_['drop']:.2f} (peak {mean_['peak']:+.2f} at n = {int(mean_['peak_n'])}, "
            f"final {mean_['final']:+.2f})",
            "averaging alone still overoptimizes under label noise; conservatism is what removes it "
            "[digest, 2nd-hand]",
            mean_["drop"] > max(wco["drop"], uwo_["drop"]) and not practically_none(mean_),
            "the mean cancels part of each member's error, so it helps, but shared extrapolation "
            "in the rare region survives averaging",
        ),
        Row(
            "no label noise: gold gain at n_max, single / WCO / UWO (drop from peak for the single RM)",
            f"{sc['single']['final']:+.2f} / {sc['WCO (min)']['final']:+.2f} / "
            f"{sc['UWO (coef 1)']['final']:+.2f} ({sc['single']['drop']:.2f})",
            "the improvement holds both with and without label noise (abstract)",
            min(sc["WCO (min)"]["final"], sc["UWO (coef 1)"]["final"]) > sc["single"]["final"],
            f"{clean['accuracy']:.2f} held-out pair accuracy: without noise our proxies are "  # type: ignore[str-format]
            "accurate enough that a single RM does not overoptimize up to n_max, so there is "
            "nothing for conservatism to fix, and its pessimism can cost a little; in the paper's "
            "setting (Pythia reward models on text) a single RM overoptimizes without noise too",
        ),
        Row(
            f"UWO coefficient sweep (standardized members), gold gain at n = {n_max}",
            ", ".join(f"coef {c:g}: {uwo_final[c]:+.2f}" for c in UWO_SWEEP),
            "UWO is robust to its coefficient lambda [digest, 2nd-hand]",
            None,
            "the paper tunes lambda per setting; rewardlab's default uwo coef is 1.0",
        ),
        Row(
            f"RL, single proxy RM (mean over the {MEMBERS} members), beta = {b0}: gold gain at its "
            "peak / at the end of training (KL to the base)",
            f"{r_single['peak']:+.2f} (KL {r_single['peak_kl']:.1f}) / {r_single['final']:+.2f} "
            f"(KL {r_single['final_kl']:.1f})",
            "a single proxy RM overoptimizes under RL too: gold rises, then falls as KL grows "
            "(the setting's premise, from Gao et al. 2023; the paper's PPO runs [digest, 2nd-hand])",
            r_single["drop"] > 0.25 * abs(r_single["peak"]),
            f"agree = drop > 25% of the peak; the policy's proxy reward keeps rising "
            f"({r_single['proxy_start']:+.2f} -> {r_single['proxy_final']:+.2f} member std); its "
            f"mean ends at |mu| = {r_single['mean_norm']:.1f} ({r_single['along_w']:.1f} along w; "
            "the gold optimum is 5 along w, base samples mostly within |x| of about 3), where each "
            "proxy extrapolates its own way",
        ),
        Row(
            f"RL, beta = {b0}: drop of gold from its peak to the end, and final gold, for "
            "single / mean / WCO / UWO",
            f"drop {r_single['drop']:.2f} / {r_mean['drop']:.2f} / {r_wco['drop']:.2f} / "
            f"{r_uwo['drop']:.2f}; final {r_single['final']:+.2f} / {r_mean['final']:+.2f} / "
            f"{r_wco['final']:+.2f} / {r_uwo['final']:+.2f}",
            "with PPO, conservative optimization always reduces overoptimization and beats a single "
            "RM (the abstract as paraphrased by the project digest) [digest, 2nd-hand]",
            worlds_ok == len(rl_per_world),
            f"agree = in every world ({worlds_ok} of {len(rl_per_world)}) both WCO and UWO fall "
            "less than the single RM and end above it; peaks (KL): WCO "
            f"{r_wco['peak']:+.2f} ({r_wco['peak_kl']:.1f}), UWO {r_uwo['peak']:+.2f} "
            f"({r_uwo['peak_kl']:.1f}), single {r_single['peak']:+.2f} "
            f"({r_single['peak_kl']:.1f}): conservatism slows the fall, it does not raise the peak; "
            "final gold per world: "
            + "; ".join(
                f"{short} " + ", ".join(f"{w[f'{lab}|{b0}']['final']:+.2f}" for w in rl_per_world)
                for short, lab in (("single", "single"), ("WCO", "WCO (min)"), ("UWO", "UWO (coef 1)"))
            )
            + f"; |mu| at the end: single {r_single['mean_norm']:.1f}, WCO {r_wco['mean_norm']:.1f}, "
            f"UWO {r_uwo['mean_norm']:.1f}",
        ),
        Row(
            f"RL with a small KL penalty (beta = {b1}): drop of gold from its peak for single / mean "
            f"/ WCO / UWO; final gold of WCO / UWO with vs without the penalty",
            f"drop {k_single['drop']:.2f} / {k_mean['drop']:.2f} / {k_wco['drop']:.2f} / "
            f"{k_uwo['drop']:.2f}; WCO {k_wco['final']:+.2f} vs {r_wco['final']:+.2f}, UWO "
            f"{k_uwo['final']:+.2f} vs {r_uwo['final']:+.2f}",
            "conservative optimization with a small KL penalty prevents overoptimization at no "
            "cost (the abstract as paraphrased by the project digest) [digest, 2nd-hand]",
            practically_none(
                {"drop": k_wco["drop"], "peak": k_wco["peak"]}
            ) and practically_none({"drop": k_uwo["drop"], "peak": k_uwo["peak"]})
            and k_wco["final"] >= 0.95 * r_wco["final"] and k_uwo["final"] >= 0.95 * r_uwo["final"],
            "agree = WCO and UWO drop ≤ 10% of their peak and end within 5% of (or above) their "
            f"unpenalized final gold; KL at the end: WCO {k_wco['final_kl']:.1f}, UWO "
            f"{k_uwo['final_kl']:.1f}, single {k_single['final_kl']:.1f} nats; against the "
            f"unpenalized runs' peaks (kept only by early stopping): WCO {r_wco['peak']:+.2f}, UWO "
            f"{r_uwo['peak']:+.2f}; the penalty alone does not save the single RM (final "
            f"{k_single['final']:+.2f})",
        ),
    ]
    setup = (
        f"Responses are points x in R^{DIM} from a base policy (95% N(0, I), 5% N(0, "
        f"{WIDE_SCALE ** 2:g} I)); gold g(x) = w.x - 0.1|x|^2. {MEMBERS} tiny MLP reward models "
        f"(2 hidden layers of 32) per world, trained on the same {pairs} gold-labelled base pairs "
        f"with 25% of the labels flipped (different init seeds), full-batch Adam, {steps} steps, "
        f"rewardlab's `bradley_terry` loss; member rewards standardized. Best-of-n with n up to "
        f"{n_max} from one pool of {n_max} samples per prompt, {prompts} prompts per world, "
        f"{worlds_noisy} worlds with 25% noise and {worlds_clean} without; aggregations from the "
        "registered `ensemble_aggregation` axis (mean, min, uwo, mean_minus_std). RL, in each noisy "
        "world: a policy of the base policy's form (two-component Gaussian mixture: shared "
        "learnable mean, learnable per-dimension log-stds, learnable mixture weight), initialized "
        f"at the base policy (the reference), {rl_steps} steps of REINFORCE with Adam (lr "
        f"{RL_LR:g}), {rl_groups} groups of {RL_GROUP} samples per step, the registered `rloo` "
        "advantage and `pg` loss, against each single member and each aggregation; reward = "
        "aggregated standardized proxy - beta * k1 (registered `k1`, log pi - log pi_base, as "
        f"RLHF's PPO puts its KL penalty in the reward), beta = {b0} and {b1}. Gold under the "
        "policy is exact; KL(pi || pi_base) is a Monte Carlo mean of k1 over "
        f"{RL_EVAL_SAMPLES} fresh samples every {RL_EVAL_EVERY} steps. Gold is the gain over the "
        "base policy's mean (gold units)."
    )
    return ExperimentResult(
        name="ensemble-overoptimization",
        title="Conservative reward-model ensembles (WCO, UWO) against overoptimization in best-of-n "
        "and RL",
        paper="Reward Model Ensembles Help Mitigate Overoptimization",
        arxiv="2310.02743",
        rows=rows,
        setup=setup,
        files=[png],
        data={
            "ns": ns,
            "kl": kls,
            "noisy": noisy,
            "clean": clean,
            "summary": s,
            "summary_clean": sc,
            "rl": rl,
            "rl_curves": rl_curves,
            "rl_worlds_ok": worlds_ok,
        },
    )
