"""Test-time selection: every selector on hand-made cases (ties, missing answers, frequency
thresholds), the analytic KL of best-of-n, majority vote on the arithmetic task, the curves on
synthetic scores, config errors, and end to end: best-of-n with a learned Bradley-Terry reward
model raises the gold reward (the digit share) of a warm-started tiny model's picks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from preference_setup import digits_vs_letters

from rewardlab.bon import BonConfig, answer_extractor, run_bon, selection_curves
from rewardlab.config import parse_config
from rewardlab.data.tasks import make_task
from rewardlab.errors import ConfigError
from rewardlab.selection import (
    SELECTORS,
    best_of_majority,
    best_of_majority_top_k,
    best_of_n,
    bon_kl,
    conservative_bon,
    ensemble_score,
    majority,
)

NAN = math.nan


# --------------------------------------------------------------------------- best_of_n


def test_best_of_n_argmax_ties_and_nan() -> None:
    assert best_of_n([0.1, 0.9, 0.3]) == 1
    assert best_of_n([0.5, 0.9, 0.9]) == 1  # tie: lowest index
    assert best_of_n([NAN, 0.2, NAN]) == 1  # a reward that does not apply never wins
    assert best_of_n([NAN, NAN]) == 0
    assert best_of_n(torch.tensor([-3.0, -1.0])) == 1
    with pytest.raises(ValueError):
        best_of_n([])


# --------------------------------------------------------------------------- majority


def test_majority_most_frequent_answer_and_its_best_candidate() -> None:
    answers = ["7", "3", "7", "3", "7"]
    scores = [0.0, 5.0, 0.2, 5.0, 0.1]
    assert majority(scores, answers) == 2  # "7" wins 3-2; its best-scoring candidate is 2


def test_majority_ties_between_answers_go_by_score_then_index() -> None:
    # "a" and "b" both twice: "b"'s best candidate scores higher.
    assert majority([0.1, 0.2, 0.9, 0.3], ["a", "a", "b", "b"]) == 2
    # equal counts and equal best scores: the answer whose best candidate comes first.
    assert majority([0.0, 0.0, 0.0, 0.0], ["b", "a", "a", "b"]) == 0
    # within the winning answer, equal scores: lowest index.
    assert majority([1.0, 0.0, 1.0], ["x", "y", "x"]) == 0


def test_majority_none_answers_do_not_vote() -> None:
    # Three candidates without an answer outnumber "5", but do not vote.
    assert majority([9.0, 9.0, 9.0, 0.0], [None, None, None, "5"]) == 3
    # no answers at all: best-of-n on the scores
    assert majority([0.1, 0.7, 0.3], [None, None, None]) == 1
    with pytest.raises(ValueError):
        majority([0.1, 0.2], ["a"])


def test_majority_on_the_arithmetic_task() -> None:
    task = make_task("arithmetic", {})
    problem = task.heldout(1, seed=0)[0]
    wrong = str(int(problem.answer) + 1)
    completions = [f" {wrong}", problem.answer, f"{problem.answer} ", wrong + "0", problem.answer, ""]
    extract = answer_extractor("strip")
    answers = [extract(c) for c in completions]
    assert answers[-1] is None and answers[1] == answers[2] == problem.answer
    gold = task.reward_fn()([problem.prompt] * 6, completions, answer=[problem.answer] * 6)
    # a reward that prefers the wrong answer: best-of-n follows it, the vote does not
    misleading = [1.0, 0.0, 0.0, 0.5, 0.0, 0.0]
    assert gold[best_of_n(misleading)] == 0.0
    assert gold[majority(misleading, answers)] == 1.0
    assert majority(misleading, answers) == 1


def test_answer_extractors() -> None:
    assert answer_extractor("normalize")("The answer is: **Paris**.") == "paris"
    assert answer_extractor("last_number")("so 3 + 4 = 7.0") == answer_extractor("last_number")("7")
    assert answer_extractor("strip")("   ") is None


# --------------------------------------------------------------------------- best_of_majority


def test_best_of_majority_threshold_keeps_frequent_answers_then_takes_best_score() -> None:
    answers = ["a", "a", "a", "b", "b", "c", "d", None]  # N = 8: a 3/8, b 2/8, c 1/8, d 1/8
    scores = [0.1, 0.2, 0.3, 0.5, 0.4, 0.9, 0.95, 2.0]
    assert best_of_n(scores) == 7  # the reward model's favourite has no answer
    assert best_of_majority(scores, answers, alpha=0.0) == 6  # best-of-n over answered ones
    assert best_of_majority(scores, answers, alpha=0.125) == 6  # 1/8 is kept (>=)
    assert best_of_majority(scores, answers, alpha=0.2) == 3  # a, b kept: b scores higher
    assert best_of_majority(scores, answers, alpha=0.375) == 2  # exactly 3/8: only a
    # a threshold above every frequency falls back to the most frequent answer
    assert best_of_majority(scores, answers, alpha=0.5) == majority(scores, answers) == 2


def test_best_of_majority_top_k_and_ties() -> None:
    answers = ["a", "a", "b", "b", "c"]
    scores = [0.3, 0.3, 0.1, 0.8, 0.9]
    assert best_of_majority_top_k(scores, answers, alpha=0.4, k=2) == [3, 0]  # one per answer
    assert best_of_majority_top_k(scores, answers, alpha=0.4, k=5) == [3, 0]  # |C| < k
    assert best_of_majority_top_k(scores, answers, alpha=0.0, k=3) == [4, 3, 0]
    assert best_of_majority_top_k([0.2, 0.5], [None, None], k=1) == [1]  # no answers: by score
    assert best_of_majority([0.5, 0.5], ["x", "y"], alpha=0.5) == 0  # tie: lowest index
    with pytest.raises(ConfigError, match="alpha"):
        best_of_majority(scores, answers, alpha=1.5)
    with pytest.raises(ConfigError, match="k must"):
        best_of_majority_top_k(scores, answers, k=0)


# --------------------------------------------------------------------------- conservative_bon


def test_conservative_bon_aggregations() -> None:
    members = torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.5, 2.0]])
    assert best_of_n(members.mean(0)) == 2  # the optimistic mean likes the disputed one
    assert conservative_bon(members, aggregation="min") == 1
    mean, std = members.mean(0), members.std(0, unbiased=False)
    assert ensemble_score(members, aggregation="mean_std", coef=1.0).tolist() == pytest.approx(
        (mean - std).tolist()
    )
    assert conservative_bon(members, aggregation="mean_std", coef=1.0) == 1
    assert conservative_bon(members, aggregation="mean_std", coef=0.0) == 2
    var = members.var(0, unbiased=False)
    assert ensemble_score(members, aggregation="mean_var", coef=2.0).tolist() == pytest.approx(
        (mean - 2 * var).tolist()
    )
    # NaN members are skipped per candidate; a candidate nobody scores loses
    partial = torch.tensor([[NAN, 0.4, NAN], [0.9, 0.1, NAN]])
    assert ensemble_score(partial, aggregation="min").tolist()[:2] == pytest.approx([0.9, 0.1])
    assert conservative_bon(partial, aggregation="min") == 0
    with pytest.raises(ConfigError, match="aggregation"):
        conservative_bon(members, aggregation="max")


@pytest.mark.parametrize("aggregation", ["min", "mean_std", "mean_var"])
def test_conservative_bon_with_one_member_is_best_of_n(aggregation: str) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randn(7, generator=gen)
        assert conservative_bon(scores[None], aggregation=aggregation, coef=3.0) == best_of_n(scores)


def test_registry_entries_name_their_papers() -> None:
    assert SELECTORS.names() == ["best_of_majority", "best_of_n", "conservative_bon", "majority"]
    assert SELECTORS.get("best_of_majority").arxiv == "2510.03199"
    assert SELECTORS.get("best_of_majority").params == {"alpha": 0.0}
    assert SELECTORS.get("conservative_bon").inputs == ("member_scores",)
    assert SELECTORS.get("majority").inputs == ("scores", "answers")


# --------------------------------------------------------------------------- KL


def test_bon_kl_values() -> None:
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    values = [bon_kl(n) for n in (1, 2, 4, 8, 16, 64)]
    assert values == sorted(values)
    with pytest.raises(ValueError):
        bon_kl(0)


# --------------------------------------------------------------------------- curves


def test_curves_on_synthetic_scores_are_nested_and_bounded() -> None:
    gen = torch.Generator().manual_seed(1)
    gold = torch.rand(50, 8, generator=gen)
    noisy = gold + 0.1 * torch.randn(50, 8, generator=gen)
    answers = [[str(int(g * 3)) for g in row] for row in gold.tolist()]
    selectors = [("bon", "best_of_n", {}), ("oracle", "best_of_n", {}), ("vote", "majority", {})]
    gold_c, sel_c, mean_c, oracle_c, picks = selection_curves(
        gold, noisy, noisy[None], answers, selectors[:1] + selectors[2:], [1, 2, 4, 8]
    )
    assert gold_c["bon"][0] == pytest.approx(mean_c[0])  # n = 1: every candidate, averaged
    assert gold_c["bon"] == sorted(gold_c["bon"])  # more candidates, better picks
    assert sel_c["bon"] == sorted(sel_c["bon"])
    assert all(g <= o + 1e-9 for g, o in zip(gold_c["bon"], oracle_c, strict=True))
    assert oracle_c == sorted(oracle_c)
    assert picks["bon"].shape == (50,)
    # selecting on the gold itself gives the oracle
    perfect, *_ = selection_curves(gold, gold, gold[None], answers, selectors[1:2], [1, 2, 4, 8])
    assert perfect["oracle"] == pytest.approx(oracle_c)
    # prefixes only: n = 1 is the first candidate
    first, _, mean_first, _, _ = selection_curves(
        gold, noisy, noisy[None], answers, selectors[:1], [1, 8], average_blocks=False
    )
    assert first["bon"][0] == pytest.approx(float(gold[:, 0].mean())) == pytest.approx(mean_first[0])


# --------------------------------------------------------------------------- config


def _config(tmp_path: Path, **overrides: Any) -> BonConfig:
    data: dict[str, Any] = {
        "run_dir": str(tmp_path / "bon"),
        "rewards": [{"name": "dense_rewards:digit_fraction"}],
        "select": [{"name": "dense_rewards:digit_fraction"}],
    }
    data.update(overrides)
    return parse_config(BonConfig, data)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="select: give at least one"):
        _config(tmp_path, select=[])
    with pytest.raises(ConfigError, match="unknown selector 'best_of_m'.*did you mean 'best_of_n'"):
        _config(tmp_path, selectors=[{"name": "best_of_m"}])
    with pytest.raises(ConfigError, match="has no parameter 'alfa'"):
        _config(tmp_path, selectors=[{"name": "best_of_majority", "params": {"alfa": 0.1}}])
    with pytest.raises(ConfigError, match="n: a list"):
        _config(tmp_path, n=[0, 2])
    with pytest.raises(ConfigError, match="labelled 'best_of_majority'"):
        _config(tmp_path, selectors=[{"name": "best_of_majority", "label": "best_of_majority"},
                                     {"name": "best_of_majority"}])
    assert _config(tmp_path, n=[8, 1, 2, 2]).n == [1, 2, 8]
    # a bad parameter value stops the run before the model loads, naming the selector
    bad = _config(tmp_path, selectors=[{"name": "best_of_majority", "params": {"alpha": 2}}])
    with pytest.raises(ConfigError, match=r"selectors\[0\]\.params: best_of_majority: alpha"):
        run_bon(bad)
    # a mistake in a selection reward is reported under select[i], not rewards[i]
    typo = _config(tmp_path, select=[{"name": "exact_mach"}])
    with pytest.raises(ConfigError, match=r"^select\[0\]\.name: unknown reward 'exact_mach'"):
        run_bon(typo)


# --------------------------------------------------------------------------- end to end


_LOADED: dict[str, Any] = {}


def learned_rm(prompts: list[str], completions: list[str], path: str, **columns: Any) -> list[float]:
    """A selection reward for the end-to-end test: a saved reward model's scores (loaded once)."""
    from rewardlab.reward_models.model import RewardModel

    if path not in _LOADED:
        _LOADED[path] = RewardModel.load(path)
    return _LOADED[path].score(prompts, completions)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Bradley-Terry reward model trained on digits-over-letters pairs (a few seconds)."""
    from rewardlab.reward_models.config import RewardModelConfig
    from rewardlab.reward_models.trainer import train_reward_model

    folder = tmp_path_factory.mktemp("rm")
    config = parse_config(RewardModelConfig, {
        "seed": 1, "run_dir": str(folder / "run"),
        "data": {"path": str(digits_vs_letters(folder / "train.jsonl", 96)),
                 "eval_path": str(digits_vs_letters(folder / "eval.jsonl", 32, seed=1))},
        "train": {"epochs": 2, "batch_size": 16, "micro_batch_size": 16, "optim": {"lr": 1e-3}},
    })
    result = train_reward_model(config)
    assert result.last_eval["eval/accuracy"] >= 0.9
    return result.run_dir / "final"


def test_best_of_n_with_a_learned_rm_raises_the_gold_reward(
    tmp_path: Path, warm_start: Path, reward_model: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}:"}) + "\n" for i in range(200, 232)))
    config = parse_config(BonConfig, {
        "seed": 3,
        "run_dir": str(tmp_path / "bon"),
        "model": {"name": str(warm_start)},
        "data": {"path": str(prompts), "heldout_size": 32},
        "rewards": [{"name": "dense_rewards:digit_fraction"}],  # gold
        "select": [{"name": "test_bon:learned_rm", "args": {"path": str(reward_model)}}],
        "selectors": [
            {"name": "best_of_n"},
            {"name": "majority"},
            {"name": "best_of_majority", "params": {"alpha": 0.25}},
            {"name": "conservative_bon", "params": {"aggregation": "mean_std"}},
        ],
        "n": [1, 2, 4, 8],
        "sampling": {"max_new_tokens": 5},
    })
    result = run_bon(config)
    bon = result.gold["best_of_n"]
    print("\n" + (result.run_dir / "bon.md").read_text())
    # n = 1 is the policy's own mean gold; best-of-8 under the learned RM is far above it
    assert bon[0] == pytest.approx(result.mean_gold[0])
    assert 0.2 < bon[0] < 0.8  # the warm start writes digits about half the time
    assert bon[-1] >= bon[0] + 0.2
    assert bon[-1] >= result.oracle_gold[-1] - 0.15  # close to the best of the 8
    assert bon == sorted(bon)
    assert result.selection["best_of_n"] == sorted(result.selection["best_of_n"])
    # one selection reward: the conservative ensemble is best-of-n
    assert result.gold["conservative_bon"] == pytest.approx(bon)
    assert result.kl == pytest.approx([bon_kl(n) for n in (1, 2, 4, 8)])
    assert all(g <= o + 1e-6 for g, o in zip(bon, result.oracle_gold, strict=True))
    saved = json.loads((result.run_dir / "bon.json").read_text())
    assert saved["n"] == [1, 2, 4, 8] and saved["gold"]["best_of_n"] == pytest.approx(bon)
    assert (result.run_dir / "bon.png").stat().st_size > 1000
    assert "| n | KL(BoN) | best_of_n |" in (result.run_dir / "bon.md").read_text()
    samples = [json.loads(x) for x in (result.run_dir / "bon_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and len(samples[0]["candidates"]) == 8
    assert set(samples[0]["picked"]) == {"best_of_n", "majority", "best_of_majority", "conservative_bon"}


def test_bon_command_prints_the_table_and_writes_the_run(tmp_path: Path, warm_start: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from rewardlab.bon import bon_command

    app = typer.Typer()
    app.command("bon")(bon_command)
    app.command("other")(lambda: None)  # two commands: `bon` is then a subcommand, as in rewardlab
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}:"}) + "\n" for i in range(4)))
    config = tmp_path / "bon.yaml"
    config.write_text(
        f"model: {{name: {warm_start}}}\n"
        f"data: {{path: {prompts}}}\n"
        "rewards: [{name: 'dense_rewards:digit_fraction'}]\n"
        "select: [{name: 'dense_rewards:digit_fraction'}]\n"
        "sampling: {max_new_tokens: 5}\n"
    )
    out = CliRunner().invoke(
        app, ["bon", str(config), "--set", f"run_dir={tmp_path / 'run'}", "--set", "n=[1,4]"]
    )
    assert out.exit_code == 0, out.output
    assert "best_of_n" in out.output and "oracle gold" in out.output
    saved = json.loads((tmp_path / "run" / "bon.json").read_text())
    # selecting on the gold itself: best-of-n is the oracle
    assert saved["gold"]["best_of_n"] == pytest.approx(saved["oracle_gold"])
    bad = CliRunner().invoke(app, ["bon", str(config), "--set", "n=[0]"])
    assert isinstance(bad.exception, ConfigError) and "n: a list" in str(bad.exception)
