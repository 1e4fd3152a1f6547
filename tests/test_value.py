"""The critic (ValueModel) and PPO's value loss."""

from __future__ import annotations

import io

import pytest
import torch

from rewardlab.algorithms.value import VALUE_LOSSES, value_loss
from rewardlab.batch import RolloutBatch
from rewardlab.config import LoraConfig, ModelConfig
from rewardlab.models.loading import add_lora, is_lora, load_policy
from rewardlab.models.logprobs import forward_completion_logits
from rewardlab.models.value import ValueModel, load_value_model, make_value_model
from rewardlab.rollout.hf import SamplingParams, generate


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


# --------------------------------------------------------------------------- value loss
#
# clip c = 0.2; per row (V, V_old, R):
#   0: (1.0, 0.5, 1.0): unclipped (1 - 1)^2 = 0; V leaves the band [0.3, 0.7], clipped 0.7,
#      (0.7 - 1)^2 = 0.09 -> max 0.09, loss 0.045, and no gradient although V = R.
#   1: (0.0, 0.5, 1.0): (0 - 1)^2 = 1; clipped 0.3, (0.3 - 1)^2 = 0.49 -> 1, loss 0.5.
#   2: (0.5, 0.5, 0.0): in the band, both 0.25 -> loss 0.125.
#   3: (2.0, 0.0, 1.0): (2 - 1)^2 = 1; clipped 0.2, (0.2 - 1)^2 = 0.64 -> 1, loss 0.5.
# Unclipped (clip=None): 0.5 * (V - R)^2 = [0, 0.5, 0.125, 0.5].
V = [1.0, 0.0, 0.5, 2.0]
V_OLD = [0.5, 0.5, 0.5, 0.0]
R = [1.0, 1.0, 0.0, 1.0]


def test_value_loss_hand_computed_clipped_and_unclipped():
    values = t(V)[:, None].repeat(1, 2).requires_grad_(True)
    old, ret = t(V_OLD)[:, None].repeat(1, 2), t(R)[:, None].repeat(1, 2)
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]])
    loss = value_loss(values, old, ret, mask, clip=0.2)
    torch.testing.assert_close(loss[:, 0], t([0.045, 0.5, 0.125, 0.5]))
    assert loss[3, 1] == 0  # padding
    loss.sum().backward()
    # d/dV of 0.5 (V - R)^2 is V - R where the unclipped term wins; 0 where the clipped one does.
    torch.testing.assert_close(values.grad[:, 0], t([0.0, -1.0, 0.5, 1.0]))
    assert values.grad[3, 1] == 0
    unclipped = value_loss(values.detach(), old, ret, mask, clip=None)
    torch.testing.assert_close(unclipped[:, 0], t([0.0, 0.5, 0.125, 0.5]))
    # A wide band never binds: clipped equals unclipped.
    torch.testing.assert_close(value_loss(values.detach(), old, ret, mask, clip=10.0), unclipped)
    assert VALUE_LOSSES.get("ppo").inputs == ("values", "old_values", "returns", "mask")
    assert dict(VALUE_LOSSES.get("ppo").params) == {"clip": 0.2}


# --------------------------------------------------------------------------- critic


@pytest.fixture(scope="module")
def tiny():
    policy, tokenizer = load_policy(ModelConfig(name="builtin:tiny"))
    return policy, tokenizer


@pytest.fixture(scope="module")
def rollout(tiny) -> RolloutBatch:
    policy, tokenizer = tiny
    torch.manual_seed(0)
    # Prompts of different lengths, so some rows are left-padded.
    return generate(policy, tokenizer, ["1+2=", "13+40="], SamplingParams(n=2, max_new_tokens=6))


def _randomize_head(critic: ValueModel, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        critic.head.weight.copy_(torch.randn(critic.head.weight.shape, generator=gen) * 0.1)
        critic.head.bias.fill_(0.3)


def test_shapes_and_zero_initial_values(tiny, rollout):
    critic = make_value_model(tiny[0])
    values = critic.completion_values(rollout)
    assert values.shape == rollout.completion_ids.shape and values.dtype == torch.float32
    assert (values == 0).all()
    assert critic.head.weight.dtype == torch.float32
    assert all(p.requires_grad for p in critic.parameters())
    # The critic holds the decoder only (no LM head), and no tensor of the policy.
    names = [n for n, _ in critic.named_parameters()]
    assert not any("lm_head" in n for n in names)
    policy_ptrs = {p.data_ptr() for p in tiny[0].parameters()}
    assert not policy_ptrs & {p.data_ptr() for p in critic.parameters()}


def test_values_use_the_hidden_states_that_predict_each_completion_token(tiny, rollout):
    # The fresh critic's backbone is the policy's, so the policy's LM head on the critic's
    # hidden states must give back forward_completion_logits: same columns, same positions.
    policy = tiny[0]
    critic = make_value_model(policy)
    with torch.no_grad():
        hidden = critic.completion_hidden_states(rollout)
        logits = forward_completion_logits(policy, rollout, 1.0)
        torch.testing.assert_close(policy.lm_head(hidden), logits, rtol=1e-4, atol=1e-4)
    _randomize_head(critic)
    values = critic.completion_values(rollout)
    expected = (critic.head(hidden).squeeze(-1)) * rollout.completion_mask
    torch.testing.assert_close(values, expected)
    assert (values[rollout.completion_mask == 0] == 0).all()


def _hand_batch(extra_left_pad: int) -> RolloutBatch:
    # Two prompts (3 and 5 real tokens), completions of 4 and 2 real tokens (right-padded with
    # the pad id 0); ``extra_left_pad`` more pad columns in front of every prompt.
    prompts = [[0, 0, 21, 22, 23], [31, 32, 33, 34, 35]]
    prompt_mask = [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    pad = [0] * extra_left_pad
    return RolloutBatch(
        prompt_ids=torch.tensor([pad + p for p in prompts]),
        prompt_mask=torch.tensor([pad + m for m in prompt_mask]),
        completion_ids=torch.tensor([[41, 42, 43, 2], [51, 2, 0, 0]]),
        completion_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
        group=torch.tensor([0, 1]),
        truncated=torch.tensor([False, False]),
    )


def test_values_are_invariant_to_extra_left_padding_of_the_prompt(tiny):
    critic = make_value_model(tiny[0])
    _randomize_head(critic)
    with torch.no_grad():
        base = critic.completion_values(_hand_batch(0))
        padded = critic.completion_values(_hand_batch(3))
    assert base.abs().sum() > 0
    torch.testing.assert_close(padded, base, rtol=1e-5, atol=1e-5)
    assert (base[1, 2:] == 0).all()


def test_state_dict_round_trip(tiny, rollout):
    critic = make_value_model(tiny[0])
    _randomize_head(critic, seed=1)
    with torch.no_grad():
        critic.backbone.layers[0].mlp.up_proj.weight.mul_(1.5)  # differ from the policy
    buffer = io.BytesIO()
    torch.save(critic.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_value_model(tiny[0])
    fresh.load_state_dict(torch.load(buffer))
    with torch.no_grad():
        torch.testing.assert_close(
            fresh.completion_values(rollout), critic.completion_values(rollout), rtol=0, atol=0
        )


def test_gradient_reaches_head_then_backbone(tiny, rollout):
    critic = make_value_model(tiny[0])
    returns = torch.ones(rollout.completion_ids.shape)
    old = torch.zeros(returns.shape)

    def backward() -> None:
        critic.zero_grad(set_to_none=True)
        loss = value_loss(critic.completion_values(rollout), old, returns, rollout.completion_mask)
        loss.sum().backward()

    # Zero head: dV/dh = 0, so only the head learns on the first step (see ValueModel).
    backward()
    assert critic.head.weight.grad.abs().sum() > 0 and critic.head.bias.grad.abs().sum() > 0
    assert all(p.grad is None or (p.grad == 0).all() for p in critic.backbone.parameters())
    # Once the head is non-zero, the gradient reaches the backbone down to the embeddings.
    _randomize_head(critic)
    backward()
    assert critic.backbone.embed_tokens.weight.grad.abs().sum() > 0
    assert critic.backbone.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    # The policy is untouched.
    assert all(p.grad is None for p in tiny[0].parameters())


def test_make_value_model_merges_a_lora_policy_and_leaves_it_intact(tiny, rollout):
    import copy

    policy = add_lora(copy.deepcopy(tiny[0]), LoraConfig(r=4))
    with torch.no_grad():  # a non-zero adapter, so that merging matters
        gen = torch.Generator().manual_seed(0)
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    critic = make_value_model(policy)
    assert not any("lora" in n for n, _ in critic.named_parameters())
    assert all(p.requires_grad for p in critic.parameters())
    assert is_lora(policy) and any("lora_B" in n for n, _ in policy.named_parameters())
    with torch.no_grad():
        hidden = critic.completion_hidden_states(rollout)
        logits = forward_completion_logits(policy, rollout, 1.0)  # with the adapter on
        torch.testing.assert_close(
            policy.get_base_model().lm_head(hidden), logits, rtol=1e-4, atol=1e-4
        )
        plain = forward_completion_logits(tiny[0], rollout, 1.0)
        assert not torch.allclose(logits, plain, atol=1e-4)  # the adapter did change the model


def test_load_value_model_by_name(tiny, rollout):
    critic = load_value_model(ModelConfig(name="builtin:tiny"))
    with torch.no_grad():
        assert (critic.completion_values(rollout) == 0).all()
        torch.testing.assert_close(
            tiny[0].lm_head(critic.completion_hidden_states(rollout)),
            forward_completion_logits(tiny[0], rollout, 1.0),
            rtol=1e-4,
            atol=1e-4,
        )
