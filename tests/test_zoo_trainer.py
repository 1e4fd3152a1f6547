"""The zoo inside the real loop: batch filters with refill, the stateful pieces (bnpo state,
adaptive coefficients, the prompt cursor, the critic) across resume, KL in the reward, the
entropy bonus, token masks, the engine's log-probs for mismatch correction, whole-group
micro-batches, and the recipes that must raise held-out reward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_trainers import _Crash, _crash_at, _rl_config
from test_trainers import _train_metrics as _metrics

from rewardlab.config import ModelConfig, RunConfig
from rewardlab.data.prompts import prompt_source
from rewardlab.models.loading import load_policy
from rewardlab.models.logprobs import batch_logprobs
from rewardlab.rewards import build_reward_sources
from rewardlab.rollout.hf import SamplingParams, generate
from rewardlab.trainers.learner import batch_slices, micro_batch_loss
from rewardlab.trainers.online import AlgorithmState, collect, prepare, run_eval, train

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def _user_rewards_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


def _config(run_dir: Path | None = None, **overrides: Any) -> RunConfig:
    """test_trainers' small run, shorter: 6 steps, pass@1, no saved samples."""
    defaults = {"train.steps": 6, "eval.pass_k": 1, "logging.samples": 0}
    return _rl_config(run_dir or Path("unused-run-dir"), **{**defaults, **overrides})


def _pieces(config: RunConfig) -> tuple[Any, Any, Any, Any]:
    torch.manual_seed(0)
    policy, tokenizer = load_policy(config.model, seed=config.seed)
    prompts = prompt_source(config.data, tokenizer, config.seed)
    sources = build_reward_sources(config.rewards, prompts.task)
    return policy, tokenizer, prompts, sources


# --------------------------------------------------------------------------- batch filters


def test_dynamic_sampling_refills_the_batch_with_groups_that_vary() -> None:
    config = _config(**{
        "rewards": [{"name": "dense_rewards:constant_on_even_prompts"}],
        "algorithm.recipe": "dapo",
        "algorithm.batch_filter.max_rounds": 6,
    })
    policy, tokenizer, prompts, sources = _pieces(config)
    state = AlgorithmState.start(config)
    batch, metrics = collect(policy, tokenizer, prompts, sources, config, state, step=1)
    n_prompts = config.train.prompts_per_step
    assert metrics["filter/rounds"] > 1  # half the prompts are constant, so one round is short
    assert state.prompt_cursor == metrics["filter/rounds"] * n_prompts
    assert metrics["filter/kept_groups"] == n_prompts and batch.size == 4 * n_prompts
    assert batch.rewards is not None
    for g in torch.unique(batch.group):  # every kept group has something to learn
        rewards = batch.rewards[batch.group == g]
        assert rewards.max() > rewards.min()
    assert len(torch.unique(batch.group)) == n_prompts  # ids stay distinct across rounds


def test_a_step_whose_groups_are_all_filtered_out_skips_the_update(tmp_path: Path) -> None:
    # The tiny model never solves arithmetic: every group's task reward is 0, all equal (the
    # overlong penalty would tell truncated completions apart, so it is off here).
    config = _config(tmp_path / "run", **{
        "rewards": [{"name": "task"}],
        "algorithm.recipe": "dapo",
        "algorithm.reward_transforms": [],
        "algorithm.batch_filter.max_rounds": 2,
        "train.steps": 2,
    })
    result = train(config)
    steps = _metrics(result.run_dir)[1:]
    assert [m["filter/rounds"] for m in steps] == [2.0, 2.0]
    assert all(m["filter/kept_groups"] == 0 and "loss" not in m for m in steps)


def test_pf_ppo_keeps_the_best_and_worst_of_each_group(tmp_path: Path) -> None:
    config = _config(tmp_path / "run", **{"algorithm.batch_filter": {"name": "pf_ppo"}, "train.steps": 1})
    policy, tokenizer, prompts, sources = _pieces(config)
    batch, metrics = collect(policy, tokenizer, prompts, sources, config, AlgorithmState.start(config), 1)
    assert batch.size == 2 * config.train.prompts_per_step and metrics["filter/kept_rows"] == batch.size
    train(config)  # and the loop trains on groups of two


# --------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize(
    "overrides",
    [
        {"algorithm.recipe": "bnpo", "algorithm.advantage.params.momentum": 0.5},
        {"algorithm.recipe": "dapo", "rewards": [{"name": "dense_rewards:constant_on_even_prompts"}]},
        {"algorithm.recipe": "ppo", "train.ppo_epochs": 2, "train.mini_batch_size": 16},
        {"algorithm.kl.coef": 0.05, "algorithm.kl.target": 0.001, "algorithm.kl.horizon": 64,
         "algorithm.entropy.target": 5.0, "algorithm.entropy.delta": 0.01},
        {"rewards": [
            {"name": "dense_rewards:digit_fraction", "transforms": [{"name": "normalize"}]},
            {"name": "dense_rewards:constant_on_even_prompts"},
         ],
         "reward_combiner": {"name": "constrained", "params": {
             "thresholds": {"dense_rewards:constant_on_even_prompts": 0.9}, "lr": 0.5}}},
        {"rewards": [
            {"name": "dense_rewards:digit_fraction"},
            {"name": "novelty_ngram", "weight": 0.5, "args": {"scope": "both", "decay": 0.9}},
         ]},
    ],
    ids=[
        "bnpo_state", "dapo_cursor", "ppo_critic", "adaptive_coefficients", "reward_shaping_state",
        "novelty_history",
    ],
)
def test_resume_is_exact_with_algorithm_state(tmp_path: Path, overrides: dict[str, Any]) -> None:
    settings = {"checkpoint.every": 2, **overrides}
    straight = train(_config(tmp_path / "straight", **settings))
    interrupted = _config(tmp_path / "interrupted", **settings)
    with pytest.raises(_Crash):
        train(interrupted, on_step=_crash_at(5))
    resumed = train(interrupted, resume=tmp_path / "interrupted")
    assert _metrics(resumed.run_dir) == _metrics(straight.run_dir)


def test_adaptive_coefficients_move_toward_their_targets(tmp_path: Path) -> None:
    # KL target far below what training reaches: the KL coefficient must rise. Entropy target
    # far above the tiny model's entropy: the entropy coefficient rises by delta each step.
    config = _config(tmp_path / "run", **{
        "algorithm.kl.coef": 0.05, "algorithm.kl.target": 1e-6, "algorithm.kl.horizon": 64,
        "algorithm.entropy.target": 50.0, "algorithm.entropy.delta": 0.01,
    })
    steps = _metrics(train(config).run_dir)[1:]
    kl = [m["kl/coef"] for m in steps]
    # Ziegler et al.: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon, n = 32
    # completions a step, horizon 64. Step 1 is on-policy with the reference (KL = 0): x0.9;
    # every later step is far above the target: x1.1.
    assert steps[0]["kl/sequence"] == 0.0
    expected = [0.05, 0.045] + [0.045 * 1.1**i for i in range(1, 5)]
    assert kl == pytest.approx(expected)
    assert [m["entropy/coef"] for m in steps] == pytest.approx([0.01 * i for i in range(6)])


# --------------------------------------------------------------------------- prepare / loss


def test_kl_in_the_reward_subtracts_coef_times_the_sequence_kl() -> None:
    config = _config(**{"algorithm.kl": {"name": "k1", "coef": 0.5, "placement": "reward"}})
    policy, tokenizer, prompts, sources = _pieces(config)
    state = AlgorithmState.start(config)
    batch, _ = collect(policy, tokenizer, prompts, sources, config, state, 1)
    assert batch.rewards is not None
    raw = batch.rewards.clone()
    reference = load_policy(ModelConfig(), seed=99)[0]  # another network: KL is not 0
    metrics = prepare(policy, reference, None, batch, config, state)
    assert batch.old_logp is not None and batch.ref_logp is not None
    k1 = ((batch.old_logp - batch.ref_logp) * batch.completion_mask).sum(-1)
    assert torch.allclose(batch.rewards, raw - 0.5 * k1)
    assert metrics["kl/sequence"] == pytest.approx(float(k1.mean()), rel=1e-5)


def test_entropy_bonus_lowers_the_loss_by_coef_times_mean_entropy() -> None:
    config = _config(**{"algorithm.recipe": "dapo", "algorithm.batch_filter": None})  # token_mean
    policy, tokenizer, prompts, sources = _pieces(config)
    batch, _ = collect(policy, tokenizer, prompts, sources, config, AlgorithmState.start(config), 1)
    batch.advantages = torch.zeros(batch.completion_mask.shape)
    totals = {"total_tokens": float(batch.completion_mask.sum()), "total_seqs": float(batch.size), "max_len": 6}
    plain, stats = micro_batch_loss(policy, batch, totals, config, {"entropy": 0.0}, 0)
    bonus, _ = micro_batch_loss(policy, batch, totals, config, {"entropy": 0.3}, 0)
    mean_entropy = stats["entropy"][0] / stats["entropy"][1]
    assert bonus.detach().item() == pytest.approx(plain.detach().item() - 0.3 * mean_entropy, rel=1e-5)


def test_top_entropy_mask_keeps_a_fifth_of_the_tokens() -> None:
    config = _config(**{"algorithm.token_masks": [{"name": "top_entropy"}]})
    policy, tokenizer, prompts, sources = _pieces(config)
    state = AlgorithmState.start(config)
    batch, _ = collect(policy, tokenizer, prompts, sources, config, state, 1)
    metrics = prepare(policy, None, None, batch, config, state)
    assert batch.loss_mask is not None and batch.entropy is not None
    real = int(batch.completion_mask.sum())
    assert int(batch.loss_mask.sum()) == -(-real // 5) and metrics["token_mask/kept"] < 0.21
    kept = batch.entropy[batch.loss_mask.bool()]
    dropped = batch.entropy[(batch.completion_mask - batch.loss_mask).bool()]
    assert kept.min() >= dropped.max()


def test_engine_logprobs_equal_the_trainers_without_top_p() -> None:
    """The rollout's own log-probs (what TIS compares) match a fresh forward pass; with top-p
    they differ on the renormalized tokens, which is the mismatch TIS corrects."""
    policy, tokenizer = load_policy(ModelConfig(), seed=0)
    prompts = ["12+7=", "3*4=", "99-1="]
    for top_p, same in ((1.0, True), (0.5, False)):
        torch.manual_seed(0)
        batch = generate(policy, tokenizer, prompts, SamplingParams(n=4, max_new_tokens=6, top_p=top_p, logprobs=True))
        trainer = batch_logprobs(policy, batch, 1.0, 64) * batch.completion_mask
        assert batch.sampling_logp is not None
        close = torch.allclose(batch.sampling_logp, trainer, atol=1e-4)
        assert close == same


def test_tis_correction_runs_and_reports_weights(tmp_path: Path) -> None:
    config = _config(tmp_path / "run", **{
        "rollout.top_p": 0.8, "train.steps": 2, "algorithm.correction": {"name": "tis", "params": {"cap": 2.0}},
    })
    steps = _metrics(train(config).run_dir)[1:]
    # top-p renormalizes: the engine's probabilities are >= the trainer's, so weights are <= 1
    assert all(0 < m["correction/raw_weight"] <= 1.0 + 1e-5 for m in steps)


def test_whole_group_slices_never_split_a_group() -> None:
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    order = torch.tensor([9, 0, 3, 10, 1, 4, 11, 2, 5, 6, 7, 8])
    chunks = batch_slices(group, order, 7, whole_groups=True)
    # groups in order of first appearance: 3, 0, 1, 2; packed whole into chunks of <= 7 rows
    assert [c.tolist() for c in chunks] == [[9, 10, 11, 0, 1, 2], [3, 4, 5, 6, 7, 8]]
    big = batch_slices(group, torch.arange(12), 2, whole_groups=True)  # a group larger than
    assert [c.numel() for c in big] == [3, 3, 3, 3]  # the size is a chunk of its own
    assert [c.numel() for c in batch_slices(group, torch.arange(12), 5, whole_groups=False)] == [5, 5, 2]


def test_disco_gradient_does_not_depend_on_the_micro_batch_size() -> None:
    """Micro-batches of whole groups: on-policy the KL hinge is inactive, so the summed
    micro-batch gradients equal the whole batch's."""
    config = _config(**{"algorithm.recipe": "disco"})
    policy, tokenizer, prompts, sources = _pieces(config)
    batch, _ = collect(policy, tokenizer, prompts, sources, config, AlgorithmState.start(config), 1)
    batch.advantages = torch.zeros(batch.completion_mask.shape)
    totals = {"total_tokens": float(batch.completion_mask.sum()), "total_seqs": float(batch.size), "max_len": 6}
    grads = []
    for micro in (batch.size, 8, 4):
        policy.zero_grad()
        for index in batch_slices(batch.group, torch.arange(batch.size), micro, whole_groups=True):
            loss, _ = micro_batch_loss(policy, batch.select(index), totals, config, {}, 0)
            loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    for other in grads[1:]:
        assert torch.allclose(other, grads[0], atol=1e-6)


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize("recipe", ["grpo", "rloo", "dapo", "bnpo", "ppo"])
def test_recipe_raises_heldout_reward(tmp_path: Path, recipe: str) -> None:
    """On the easy task (a dense reward a fresh model can climb) each of these recipes raises
    the held-out greedy reward."""
    config = _config(tmp_path / recipe, **{
        "algorithm.recipe": recipe, "train.steps": 30, "rollout.num_generations": 6,
    })
    result = train(config)
    before, after = result.first_eval["eval/reward_greedy"], result.last_eval["eval/reward_greedy"]
    assert after > before + 0.15, (recipe, before, after)


def test_bnpo_decomposed_fits_one_beta_per_reward_component(tmp_path: Path) -> None:
    config = _config(tmp_path / "run", **{
        "rewards": [{"name": "dense_rewards:digit_fraction"}, {"name": "dense_rewards:constant_on_even_prompts"}],
        "algorithm.recipe": "bnpo",
        "algorithm.advantage.name": "bnpo_decomposed",
        "train.steps": 2,
    })
    steps = _metrics(train(config).run_dir)[1:]
    keys = {k for k in steps[0] if k.startswith("advantage/")}
    names = ("dense_rewards:digit_fraction", "dense_rewards:constant_on_even_prompts")
    assert {f"advantage/{n}/alpha" for n in names} <= keys and {f"advantage/{n}/beta" for n in names} <= keys
    # BNPO's normalizer parameters are max(1 + a/3, 1) >= 1; the state counts its updates
    assert all(m[k] >= 1.0 for m in steps for k in keys if k.endswith(("/alpha", "/beta")))
    assert [m[f"advantage/{names[0]}/steps"] for m in steps] == [1.0, 2.0]


def test_per_source_transforms_and_combiner_shape_the_reward(tmp_path: Path) -> None:
    config = _config(tmp_path / "run", **{
        "rewards": [
            {"name": "dense_rewards:digit_fraction", "transforms": [{"name": "clip", "params": {"max": 0.1}}]},
            {"name": "dense_rewards:constant_on_even_prompts", "weight": 0.0},
        ],
        "reward_combiner": {"name": "gated", "params": {
            "gate": "dense_rewards:constant_on_even_prompts", "threshold": 0.6, "include_gate": False}},
        "train.steps": 2,
    })
    steps = _metrics(train(config).run_dir)[1:]
    for m in steps:
        assert m["reward/dense_rewards:digit_fraction/shaped"] <= 0.1 + 1e-6  # clipped
        # the gate (0.5 on even prompts, the digit share on odd ones) rarely reaches 0.6, so
        # almost nothing passes; the logged reward is still the plain weighted sum as scored
        assert m["reward/shaped"] <= 0.1 + 1e-6
        assert m["reward"] == pytest.approx(m["reward/dense_rewards:digit_fraction"], abs=1e-6)


def test_novelty_bonus_remembers_training_generations_only(tmp_path: Path) -> None:
    config = _config(tmp_path / "run", **{
        "rewards": [{"name": "novelty_ngram", "args": {"scope": "global", "history_size": 10_000}}],
        "train.steps": 2, "eval.every": 1,
    })
    policy, tokenizer, prompts, sources = _pieces(config)
    bonus = sources[0].fn
    state = AlgorithmState.start(config)
    batch, metrics = collect(policy, tokenizer, prompts, sources, config, state, 1)
    assert len(bonus) == batch.size and bonus.steps_observed == 1  # one observe per step
    assert metrics["reward/novelty_ngram"] == 1.0  # nothing to compare with yet
    batch, metrics = collect(policy, tokenizer, prompts, sources, config, state, 2)
    assert len(bonus) == 2 * batch.size and metrics["reward/novelty_ngram"] < 1.0
    run_eval(policy, tokenizer, prompts, sources, config, None, 2)  # evaluation only scores
    assert len(bonus) == 2 * batch.size and bonus.steps_observed == 2
