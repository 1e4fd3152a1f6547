"""What a preference loss sees: the three data views and the batch fields of each.

A preference step works on *examples* of one format, each a prompt with one or more
completions:

- ``pairwise``: ``Pair`` (chosen, rejected);
- ``unpaired``: ``Unpaired`` (one completion and a desirable / undesirable label);
- ``listwise``: ``Ranked`` (k completions with scores).

Every completion of a micro-batch becomes one row of a ``RolloutBatch`` (the online loop's
layout, so one log-prob code serves all trainers), in the order ``row_order`` gives. Cached
per-row token log-probs (the reference's, computed once; or an iterate's) are stored per
example and stacked in the same order. ``view_fields`` turns the rows' token log-probs into
the fields that ``PREFERENCE_LOSSES`` entries name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from rewardlab.batch import RolloutBatch
from rewardlab.data.preferences import Pair, Ranked, Unpaired
from rewardlab.errors import ConfigError
from rewardlab.models.logprobs import batch_logprobs
from rewardlab.rollout.hf import tokenize_prompts
from rewardlab.trainers.learner import reference_mode

View = Literal["pairwise", "unpaired", "listwise"]
Example = Pair | Unpaired | Ranked
Order = list[tuple[int, int]]  # (example index, completion index within the example)

# How each view's data looks, for messages.
VIEW_COLUMNS = {
    "pairwise": "pairs (prompt / chosen / rejected)",
    "unpaired": "unpaired rows (prompt / completion / label)",
    "listwise": "ranked lists (prompt / completions / scores)",
}


def completions_of(example: Example) -> tuple[str, ...]:
    if isinstance(example, Pair):
        return (example.chosen, example.rejected)
    if isinstance(example, Unpaired):
        return (example.completion,)
    return example.completions


def row_order(view: View, examples: Sequence[Example], part: Sequence[int]) -> Order:
    """The rows of a micro-batch: pairwise puts every chosen completion first, then every
    rejected one (so the two halves line up); the other views go example by example."""
    if view == "pairwise":
        return [(i, 0) for i in part] + [(i, 1) for i in part]
    return [(i, j) for i in part for j in range(len(completions_of(examples[i])))]


def completion_batch(tokenizer: Any, prompts: list[str], completions: list[str]) -> RolloutBatch:
    """Each completion after its prompt: left-padded prompts, right-padded completions, an EOS
    closing every completion; row r is its own group."""
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in completions]
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, row in enumerate(encoded):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    group = torch.arange(len(encoded))
    return RolloutBatch(prompt_ids, prompt_mask, ids, mask, group, torch.zeros(len(encoded), dtype=torch.bool))


def ordered_batch(tokenizer: Any, examples: Sequence[Example], order: Order) -> RolloutBatch:
    prompts = [examples[i].prompt for i, _ in order]
    texts = [completions_of(examples[i])[j] for i, j in order]
    return completion_batch(tokenizer, prompts, texts)


def pair_batch(tokenizer: Any, pairs: list[Pair]) -> RolloutBatch:
    """The chosen completions (rows 0..B-1) then the rejected ones (B..2B-1)."""
    return ordered_batch(tokenizer, pairs, row_order("pairwise", pairs, range(len(pairs))))


# --------------------------------------------------------------------------- cached log-probs

Cache = list[list[torch.Tensor]]  # per example, per completion: token log-probs without padding


@torch.no_grad()
def cached_logprobs(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    micro: int,
    temperature: float,
    *,
    as_reference: bool,
) -> Cache:
    """Every completion's token log-probs under ``model``, computed once, padding removed.
    ``as_reference`` runs the model as the reference (with LoRA: adapter off); otherwise as
    itself (an iterate pi_t's log-probs, taken before training on its samples)."""
    out: Cache = []
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, len(examples), micro):
            part = list(range(lo, min(lo + micro, len(examples))))
            order = [(i, j) for i in part for j in range(len(completions_of(examples[i])))]
            batch = ordered_batch(tokenizer, examples, order)
            if as_reference:
                with reference_mode(model) as frozen:
                    logp = batch_logprobs(frozen, batch, temperature, len(order))
            else:
                logp = batch_logprobs(model, batch, temperature, len(order))
            lengths = batch.completion_mask.sum(-1)
            for r, (i, _j) in enumerate(order):
                if i == len(out):
                    out.append([])
                out[i].append(logp[r, : lengths[r]].clone())
    finally:
        model.train(was_training)
    return out


def stack_cached(cache: Cache, order: Order, width: int) -> torch.Tensor:
    """The cached token log-probs of ``order``'s rows, right-padded with 0 to ``width``."""
    out = torch.zeros(len(order), width)
    for r, (i, j) in enumerate(order):
        values = cache[i][j]
        out[r, : values.numel()] = values
    return out


def sequence_sums(cache: Cache, index: int) -> torch.Tensor:
    """Summed log-prob of each completion of example ``index``."""
    return torch.stack([t.sum() for t in cache[index]])


# --------------------------------------------------------------------------- fields


def pairwise_fields(token_logp: torch.Tensor, ref_token_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    """Every field a pairwise loss may name, from the [2B, T] token log-probs of a pair batch
    (policy, reference) and its mask: pairwise sums and lengths, token-level tensors, the
    unpaired view (KTO: chosen desirable, rejected not) and the two-item listwise view (LiPO)."""
    half = token_logp.shape[0] // 2
    m = mask.to(token_logp.dtype)
    seq = (token_logp * m).sum(-1)
    ref_seq = (ref_token_logp * m).sum(-1)
    lengths = m.sum(-1)
    fields: dict[str, Any] = {
        "chosen_logp": seq[:half],
        "rejected_logp": seq[half:],
        "ref_chosen_logp": ref_seq[:half],
        "ref_rejected_logp": ref_seq[half:],
        "chosen_len": lengths[:half],
        "rejected_len": lengths[half:],
        "chosen_token_logp": token_logp[:half],
        "rejected_token_logp": token_logp[half:],
        "ref_chosen_token_logp": ref_token_logp[:half],
        "ref_rejected_token_logp": ref_token_logp[half:],
        "chosen_mask": mask[:half],
        "rejected_mask": mask[half:],
        "list_logp": torch.stack([seq[:half], seq[half:]], dim=1),
        "list_ref_logp": torch.stack([ref_seq[:half], ref_seq[half:]], dim=1),
        "list_scores": torch.tensor([[1.0, 0.0]]).expand(half, 2),
        "list_mask": torch.ones(half, 2, dtype=torch.bool),
    }
    return fields | _unpaired(seq, ref_seq, lengths, torch.arange(2 * half) < half)


def unpaired_fields(
    token_logp: torch.Tensor, ref_token_logp: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    """One row per completion: summed log-probs, lengths, desirable labels, token tensors."""
    m = mask.to(token_logp.dtype)
    fields = _unpaired((token_logp * m).sum(-1), (ref_token_logp * m).sum(-1), m.sum(-1), labels)
    return fields | {"token_logp": token_logp, "ref_token_logp": ref_token_logp, "mask": mask}


def _unpaired(seq: torch.Tensor, ref_seq: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    # KTO's reference point: the rows' detached estimate of KL(pi || pi_ref), clamped at 0
    # (TRL estimates it on mismatched prompt/completion pairs; here on the batch's own rows).
    kl = (seq - ref_seq).detach().mean().clamp(min=0)
    return {"logp": seq, "ref_logp": ref_seq, "len": lengths, "label": labels, "kl": kl}


def listwise_fields(
    token_logp: torch.Tensor, ref_token_logp: torch.Tensor, mask: torch.Tensor, lists: Sequence[Ranked]
) -> dict[str, Any]:
    """[B, K] views of ranked lists (rows example by example), padded to the longest list."""
    m = mask.to(token_logp.dtype)
    seq, ref_seq = (token_logp * m).sum(-1), (ref_token_logp * m).sum(-1)
    width = max(len(r.completions) for r in lists)
    index = torch.zeros(len(lists), width, dtype=torch.long)
    list_mask = torch.zeros(len(lists), width, dtype=torch.bool)
    scores = torch.zeros(len(lists), width)
    row = 0
    for b, ranked in enumerate(lists):
        k = len(ranked.completions)
        index[b, :k] = torch.arange(row, row + k)
        list_mask[b, :k] = True
        scores[b, :k] = torch.tensor(ranked.scores, dtype=torch.float32)
        row += k
    # Padded slots point at row 0 and are masked out; the masked losses never read them.
    return {
        "list_logp": seq[index],
        "list_ref_logp": ref_seq[index],
        "list_scores": scores,
        "list_mask": list_mask,
    }


def view_fields(
    view: View, token_logp: torch.Tensor, ref_token_logp: torch.Tensor, mask: torch.Tensor, examples: Sequence[Example]
) -> dict[str, Any]:
    """The fields of a micro-batch whose rows follow ``row_order(view, ...)``."""
    if view == "pairwise":
        return pairwise_fields(token_logp, ref_token_logp, mask)
    if view == "unpaired":
        labels = torch.tensor([bool(e.label) for e in examples])  # type: ignore[union-attr]
        return unpaired_fields(token_logp, ref_token_logp, mask, labels)
    return listwise_fields(token_logp, ref_token_logp, mask, examples)  # type: ignore[arg-type]


def _dummy(view: View) -> Example:
    if view == "pairwise":
        return Pair("p", "a", "b")
    if view == "unpaired":
        return Unpaired("p", "a", True)
    return Ranked("p", ("a", "b"), (1.0, 0.0))


def available_fields(view: View, extra: Sequence[str] = ()) -> set[str]:
    """The field names a step of this view provides (plus the trainer's ``extra`` fields)."""
    example = _dummy(view)
    rows = len(row_order(view, [example], [0]))
    zeros = torch.zeros(rows, 1)
    return set(view_fields(view, zeros, zeros, torch.ones(rows, 1, dtype=torch.long), [example])) | set(extra)


def check_losses_fit(losses: Sequence[Any], view: View, extra: Sequence[str] = (), *, offline: bool = True) -> None:
    """Before any work: every configured loss must find its fields in this view, else a
    ConfigError naming the loss, what it needs and the losses that do fit."""
    from rewardlab.algorithms.preference_losses import PREFERENCE_LOSSES

    have = available_fields(view, extra)
    for k, choice in enumerate(losses):
        missing = [f for f in PREFERENCE_LOSSES.get(choice.name).inputs if f not in have]
        if missing:
            fits = sorted(e.name for e in PREFERENCE_LOSSES if set(e.inputs) <= have)
            raise ConfigError(
                f"preference.losses[{k}] ({choice.name}) needs {', '.join(missing)}, which "
                f"{VIEW_COLUMNS[view]} do not give; losses that train on this data: "
                f"{', '.join(fits) or '(none)'}"
                + (
                    " (tgdpo and treg also need preference.token_rewards)"
                    if offline and "chosen_token_rewards" in missing
                    else ""
                )
            )


def comparison_pairs(examples: Sequence[Example]) -> list[Pair]:
    """Pairs to measure ranking on: pairs as they are, each ranked list's best versus its
    worst completion (lists whose scores are all equal give none); unpaired rows give none."""
    pairs = []
    for e in examples:
        if isinstance(e, Pair):
            pairs.append(e)
        elif isinstance(e, Ranked) and max(e.scores) > min(e.scores):
            best = max(range(len(e.scores)), key=lambda j: e.scores[j])
            worst = min(range(len(e.scores)), key=lambda j: e.scores[j])
            pairs.append(Pair(e.prompt, e.completions[best], e.completions[worst]))
    return pairs


def gold_rows(examples: Sequence[Example]) -> list[dict[str, str]]:
    """Held-out prompts for the gold-reward evaluation, each with its best known answer
    (``answer``): a pair's chosen completion, a list's best one, an unpaired row's completion
    when it is desirable (undesirable unpaired rows give no prompt)."""
    rows = []
    for e in examples:
        if isinstance(e, Pair):
            rows.append({"prompt": e.prompt, "answer": e.chosen})
        elif isinstance(e, Ranked):
            best = max(range(len(e.scores)), key=lambda j: e.scores[j])
            rows.append({"prompt": e.prompt, "answer": e.completions[best]})
        elif e.label:
            rows.append({"prompt": e.prompt, "answer": e.completion})
    return rows
