"""``unlikeliness-passk``: GRPO sharpens pass@N below the base model; the unlikeliness reward
lifts it back.

"Rewarding the Unlikely: Lifting GRPO Beyond Distribution Sharpening" (He, Fried, Welleck;
arXiv 2506.02355). Abstract: GRPO has "a degenerate rank bias in which highly probable
trajectories are reinforced and rare ones are neglected. This results in distribution
sharpening: the model can solve some problems with fewer samples, but underperforms simply
sampling more solutions from the original model"; the unlikeliness reward "mitigates rank bias
and improves pass@N across a large range of N in both synthetic and real theorem proving
settings". The paper's synthetic setting and its numbers were not read ([not checked]).

Our synthetic task: several correct answers of skewed base probability.

* P prompts ``q<i>:``; the possible answers are the six letters a..f. Each letter is a correct
  answer of a prompt independently with probability 0.3 (a prompt with none gets one rare
  letter), so a prompt has 1.8 correct answers on average, drawn without regard to how likely
  the model finds them. The reward (:func:`multi_answer_reward`) is 1 when the completion is
  one correct letter, else 0.
* Base model: ``builtin:tiny`` after SFT (rewardlab's ``train_sft``) on completions drawn, for
  every prompt alike, from the skewed mixture a .50, b .25, c .12, d .07, e .04, f .02. The
  base model thus strongly prefers 'a', whether or not 'a' is correct, and reaches prompts
  whose only answers are rare letters only with many samples: its pass@1 is low and its
  pass@N climbs towards 1 with N.
* RL: GRPO (recipe ``grpo``) and GRPO + unlikeliness reward (recipe ``unlikely_grpo``: the
  registered ``unlikely`` reward transform, beta_rank 0.25 as in the authors' Lean script),
  same seeds, prompts and steps, through rewardlab's trainer stages (:mod:`rl_loop`). The
  formula checked (from the authors' code, see ``rewardlab.algorithms.reward_transforms``):

      rank_i = rank of mean_t log pi_old(y_i,t) in its group of G (0 = least likely),
      r'_i = r_i (1 - beta_rank rank_i / G)   for correct samples,
      A_i = (r'_i - mean_group r') / std_group r'   (GRPO).
* pass@N: the unbiased estimator (rewardlab's ``pass_at_k``, Chen et al. 2021) from n samples
  per prompt at temperature 1, for N = 1..n. Because each answer is a single letter plus EOS,
  the exact pass@N = mean_i 1 - (1 - p_i)^N, with p_i the model's probability of a correct
  answer of prompt i, is computed too (one forward pass per answer); it extends the curves to
  N = 1024 and checks the sampled estimate.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from rewardlab.batch import RolloutBatch
from rewardlab.config import RunConfig, parse_config
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
from rewardlab.models.logprobs import batch_logprobs_and_entropy
from rewardlab.trainers.evaluate import pass_at_k

ANSWERS = "abcdef"
MIXTURE = (0.50, 0.25, 0.12, 0.07, 0.04, 0.02)
CORRECT_RATE = 0.3
REWARD = "rewardlab.experiments.unlikeliness_passk:multi_answer_reward"
PAPER = "Rewarding the Unlikely: Lifting GRPO Beyond Distribution Sharpening"


def multi_answer_reward(
    prompts: list[str], completions: list[str], accepted: list[str] | None = None, **columns: Any
) -> list[float]:
    """1.0 when the completion is exactly one of the row's accepted letters (nothing else, not
    even whitespace, so that the exact pass@N of :func:`exact_pass` counts the same events),
    else 0.0."""
    assert accepted is not None, "the rows need an 'accepted' column"
    return [
        1.0 if len(c) == 1 and c in ok else 0.0 for c, ok in zip(completions, accepted, strict=True)
    ]


def make_prompts(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(f"unlikeliness/{seed}")
    rows = []
    for i in range(n):
        ok = "".join(a for a in ANSWERS if rng.random() < CORRECT_RATE) or rng.choice(ANSWERS[2:])
        rows.append({"prompt": f"q{i}:", "accepted": ok})
    return rows


def sft_pairs(rows: list[dict[str, str]], per_prompt: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(f"unlikeliness/sft/{seed}")
    return [
        {"prompt": row["prompt"], "completion": rng.choices(ANSWERS, MIXTURE)[0]}
        for row in rows
        for _ in range(per_prompt)
    ]


@torch.no_grad()
def answer_probs(policy: Any, tokenizer: Any, rows: list[dict[str, str]]) -> torch.Tensor:
    """[P, 6] the model's probability of each single-letter answer (the letter, then EOS)."""
    was_training = policy.training
    policy.eval()
    letters = [tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in ANSWERS]
    out = []
    for row in rows:
        ids = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
        x = torch.tensor([ids + [letter] for letter in letters])
        logp = torch.log_softmax(policy(input_ids=x).logits.float(), -1)
        first = logp[:, len(ids) - 1, :].gather(1, torch.tensor(letters)[:, None])[:, 0]
        stop = logp[:, len(ids), tokenizer.eos_token_id]
        out.append((first + stop).exp())
    policy.train(was_training)
    return torch.stack(out)


def exact_pass(probs: torch.Tensor, correct: torch.Tensor, ns: list[int]) -> dict[int, float]:
    p = (probs * correct).sum(1).clamp(0, 1)
    return {n: float((1 - (1 - p) ** n).mean()) for n in ns}


def sampled_pass(hits: list[int], n: int, ns: list[int]) -> dict[int, float]:
    return {k: sum(pass_at_k(n, c, k) for c in hits) / len(hits) for k in ns if k <= n}


def sampling_logprobs(step: int, batch: RolloutBatch, loop: Loop) -> torch.Tensor:
    """The sampling policy's token log-probs, taken before the update: the batch's old
    log-probs when the run computed them (the ``unlikely`` transform reads them), else one
    no-gradient pass (plain GRPO on-policy skips it)."""
    if batch.old_logp is not None:
        return batch.old_logp
    logp, _ = batch_logprobs_and_entropy(loop.policy, batch, loop.config.rollout.temperature, 256)
    return logp


def rank_bias(step: int, batch: RolloutBatch, loop: Loop, old: torch.Tensor) -> dict[str, float]:
    """Rank bias of this step's update: among the correct samples of each prompt's group, the
    correlation of how likely a sample was (mean token log-prob under the sampling policy,
    what ``unlikely`` ranks by) with how much its log-probability rose in the update (both
    centred within the group, pooled over the batch)."""
    config = loop.config
    new, _ = batch_logprobs_and_entropy(loop.policy, batch, config.rollout.temperature, 256)
    mask = batch.completion_mask.float()
    likely = (old * mask).sum(-1) / mask.sum(-1)
    gain = ((new - old) * mask).sum(-1)
    ok = batch.scores[REWARD] >= 1.0
    xs, ys = [], []
    for g in torch.unique(batch.group[ok]):  # within a prompt's group: what the rank sees
        rows = ok & (batch.group == g)
        if int(rows.sum()) >= 2:
            xs.append(likely[rows] - likely[rows].mean())
            ys.append(gain[rows] - gain[rows].mean())
    if not xs:
        return {}
    x, y = torch.cat(xs), torch.cat(ys)
    denom = float(x.norm() * y.norm())
    return {"rank_corr": float((x * y).sum()) / denom} if denom > 0 else {}


def run(fast: bool, seed: int, out: Path) -> ExperimentResult:
    n_prompts = 64 if fast else 128
    steps = 100 if fast else 250
    per_step = 16
    lr = 6e-4 if fast else 3e-4
    n_samples = 64 if fast else 128
    track_every = 10 if fast else 25
    rows = make_prompts(n_prompts, seed)
    correct = torch.tensor([[a in r["accepted"] for a in ANSWERS] for r in rows]).float()
    powers = [2**i for i in range(11)]  # 1..1024
    sampled_ns = [k for k in powers if k <= n_samples]
    methods = {"grpo": "GRPO", "unlikely_grpo": "GRPO + unlikeliness"}

    with tempfile.TemporaryDirectory(prefix="rewardlab-unlikely-") as tmp:
        folder = Path(tmp)
        data = write_jsonl(folder / "prompts.jsonl", rows)
        base = warm_start(
            folder, sft_pairs(rows, 8, seed), seed=seed, epochs=2 if fast else 3, lr=3e-3
        )

        def config(recipe: str) -> RunConfig:
            return parse_config(
                RunConfig,
                {
                    "seed": seed,
                    "model": {"name": str(base)},
                    "data": {"path": str(data), "heldout_size": 8},
                    "rewards": [{"name": REWARD}],
                    "rollout": {"num_generations": 8, "temperature": 1.0, "max_new_tokens": 3},
                    "algorithm": {"recipe": recipe},
                    "train": {"steps": steps, "prompts_per_step": per_step, "optim": {"lr": lr}},
                },
            )

        curves: dict[str, list[tuple[int, float]]] = {}
        probs: dict[str, torch.Tensor] = {}
        passes: dict[str, dict[int, float]] = {}
        exact: dict[str, dict[int, float]] = {}
        rewards: dict[str, float] = {}
        bias: dict[str, float] = {}
        for recipe in ("base", *methods):
            loop = make_loop(config("grpo" if recipe == "base" else recipe))
            if recipe != "base":
                curve = []
                for step in range(1, steps + 1):
                    train_step(loop, step, before_update=sampling_logprobs, after_update=rank_bias)
                    if step % track_every == 0:
                        p = answer_probs(loop.policy, loop.tokenizer, rows)
                        curve.append((step, exact_pass(p, correct, [64])[64]))
                curves[recipe] = curve
                tail = loop.history[-max(1, steps // 10) :]
                rewards[recipe] = sum(h["reward"] for h in tail) / len(tail)
                found = [h["rank_corr"] for h in loop.history if "rank_corr" in h]
                bias[recipe] = sum(found) / max(len(found), 1)
            probs[recipe] = answer_probs(loop.policy, loop.tokenizer, rows)
            exact[recipe] = exact_pass(probs[recipe], correct, powers)
            scores, _ = sample_scores(
                loop.policy, loop.tokenizer, rows, loop.sources, n_samples, 3, seed=seed + 17
            )
            hits = (scores[REWARD] >= 1.0).sum(1).tolist()
            passes[recipe] = sampled_pass(hits, n_samples, sampled_ns)

    # ---------------------------------------------------------------- figure
    labels = {"base": "base (SFT)", **methods}
    colors = {"base": "k", "grpo": "tab:red", "unlikely_grpo": "tab:blue"}
    fig, axes = new_figure(3, width=4.0)
    ax = axes[0, 0]
    for m in ("base", *methods):
        ax.plot(powers, [exact[m][k] for k in powers], "-", color=colors[m], lw=1, label=labels[m])
        ax.plot(sampled_ns, [passes[m][k] for k in sampled_ns], "o", color=colors[m], ms=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N")
    ax.set_ylabel("pass@N")
    ax.set_title("pass@N (dots: unbiased estimate, lines: exact)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    width = 0.27
    for j, m in enumerate(("base", *methods)):
        mean = probs[m].mean(0).tolist()
        ax.bar([i + (j - 1) * width for i in range(len(ANSWERS))], mean, width, color=colors[m], label=labels[m])
    ax.set_xticks(range(len(ANSWERS)), list(ANSWERS))
    ax.set_ylabel("mean probability over prompts")
    ax.set_title(f"answer distribution (SFT mixture {MIXTURE[0]:.2f} ... {MIXTURE[-1]:.2f})", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    ax.axhline(exact["base"][64], color="k", lw=1, label=labels["base"])
    for m in methods:
        ax.plot([s for s, _ in curves[m]], [v for _, v in curves[m]], "-o", ms=3, color=colors[m], label=labels[m])
    ax.set_xlabel("RL step")
    ax.set_ylabel("exact pass@64")
    ax.set_title("pass@64 during training", fontsize=9)
    ax.legend(fontsize=7)
    png = save_figure(fig, out / "unlikeliness-passk.png")

    # ---------------------------------------------------------------- rows
    big = max(sampled_ns)
    mid = [k for k in sampled_ns if 4 <= k <= big]

    def fmt(d: dict[int, float], k: int) -> str:
        return f"{d[k]:.3f}"

    def trio(k: int) -> str:
        return (
            f"base {fmt(passes['base'], k)}, GRPO {fmt(passes['grpo'], k)}, "
            f"unlikeliness {fmt(passes['unlikely_grpo'], k)}"
        )

    lift = [k for k in mid if passes["unlikely_grpo"][k] > passes["grpo"][k]]
    below = [k for k in sampled_ns if passes["grpo"][k] < passes["base"][k]]
    top_share = {m: float(probs[m].mean(0).max()) for m in probs}
    top_letter = {m: ANSWERS[int(probs[m].mean(0).argmax())] for m in probs}
    p_correct = {m: (probs[m] * correct).sum(1) for m in probs}
    lost = {m: float((p_correct[m] < 0.01).float().mean()) for m in probs}
    rows_out = [
        Row(
            f"pass@1 (unbiased, n = {n_samples} samples per prompt, {n_prompts} prompts)",
            trio(1),
            "GRPO sharpens: 'the model can solve some problems with fewer samples' (abstract; no synthetic number [not checked])",
            passes["grpo"][1] > passes["base"][1],
            f"exact: base {exact['base'][1]:.3f}, GRPO {exact['grpo'][1]:.3f}, "
            f"unlikeliness {exact['unlikely_grpo'][1]:.3f}; mean training reward over the last "
            f"10% of steps: GRPO {rewards['grpo']:.3f}, unlikeliness {rewards['unlikely_grpo']:.3f}",
        ),
        Row(
            f"pass@{big}: GRPO vs base",
            trio(big),
            "GRPO 'underperforms simply sampling more solutions from the original model' (abstract)",
            passes["grpo"][big] < passes["base"][big],
            f"GRPO is below the base model for N in {below} (of {sampled_ns}); exact pass@1024: "
            f"base {exact['base'][1024]:.3f}, GRPO {exact['grpo'][1024]:.3f}",
        ),
        Row(
            f"pass@N, N = 4..{big}: GRPO + unlikeliness vs GRPO",
            f"higher for N in {lift} (of {mid}); pass@16: {trio(16)}",
            "the unlikeliness reward 'improves pass@N across a large range of N' (abstract)",
            len(lift) == len(mid),
            "agree = higher than GRPO at every N from 4 up",
        ),
        Row(
            f"pass@{big}: GRPO + unlikeliness vs base",
            trio(big),
            "it recovers the base model's large-N pass@N [digest, 2nd-hand]; the abstract says "
            "only that it improves pass@N over a large range of N and mitigates rank bias",
            passes["unlikely_grpo"][big] >= passes["base"][big] - 0.02,
            f"agree = within 0.02 of the base model; exact pass@1024: unlikeliness "
            f"{exact['unlikely_grpo'][1024]:.3f} vs base {exact['base'][1024]:.3f}",
        ),
        Row(
            "rank bias of the updates: within-group corr(likelihood of a correct sample, rise of "
            "its log-prob in the step), mean over steps",
            f"GRPO {bias['grpo']:+.2f}, GRPO + unlikeliness {bias['unlikely_grpo']:+.2f}",
            "GRPO's rank bias: 'highly probable trajectories are reinforced and rare ones are "
            "neglected'; the unlikeliness reward up-weights rare correct ones (abstract)",
            bias["grpo"] > 0 and bias["unlikely_grpo"] < bias["grpo"],
            "likelihood = mean token log-prob under the sampling policy (what `unlikely` ranks "
            "by); agree = positive for GRPO and lower with the unlikeliness reward",
        ),
        Row(
            "where the mass goes: mean probability of the most likely letter; share of prompts "
            "whose P(correct answer) < 0.01",
            ", ".join(
                f"{labels[m]} {top_letter[m]} {top_share[m]:.2f}; {lost[m]:.3f}"
                for m in ("base", *methods)
            ),
            "distribution sharpening (abstract)",
            None,
            f"share of prompts each letter is correct for: "
            f"{', '.join(f'{a} {v:.2f}' for a, v in zip(ANSWERS, correct.mean(0).tolist(), strict=True))}. "
            "A policy that barely tells the prompts apart sharpens onto the letter correct "
            "most often; a prompt whose correct answers it samples less than 1 time in 100 is "
            "practically lost for N up to ~100",
        ),
    ]
    setup = (
        f"{n_prompts} prompts, answers a..f, each correct with probability {CORRECT_RATE} per "
        f"prompt; base = `builtin:tiny` after SFT on the prompt-independent mixture "
        f"{', '.join(f'{a} {w:.2f}' for a, w in zip(ANSWERS, MIXTURE, strict=True))}. RL: "
        f"{steps} steps x {per_step} prompts x 8 samples, lr {lr:g}, recipes `grpo` and "
        f"`unlikely_grpo` (beta_rank 0.25), on-policy (1 epoch, 1 mini-batch). pass@N: "
        f"rewardlab's unbiased `pass_at_k` from {n_samples} samples per prompt (and exact, "
        "from the answer probabilities)."
    )
    return ExperimentResult(
        name="unlikeliness-passk",
        title="GRPO's pass@N falls below the base model at large N; the unlikeliness reward lifts it",
        paper=PAPER,
        arxiv="2506.02355",
        rows=rows_out,
        setup=setup,
        files=[png],
        data={
            "pass_sampled": passes,
            "pass_exact": exact,
            "n_samples": n_samples,
            "curves": curves,
            "answer_probs": {m: probs[m].mean(0).tolist() for m in probs},
            "lost_prompts": lost,
            "rank_corr": bias,
            "train_reward": rewards,
        },
    )
