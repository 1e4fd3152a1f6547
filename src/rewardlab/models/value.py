"""The critic for PPO with a learned value function: a causal-LM backbone plus a scalar head.

The value at completion position t is read from the hidden state that predicts completion
token t, i.e. the state "prompt + completion tokens < t" in which token t is chosen. These are
the same columns (P-1 .. P+T-2) and position ids that ``forward_completion_logits`` uses, so
values and log-probs line up token by token.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from rewardlab.batch import RolloutBatch
from rewardlab.config import ModelConfig
from rewardlab.errors import RewardlabError
from rewardlab.models.loading import is_lora, resolve_model_path


def _hidden_size(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


class ValueModel(nn.Module):
    """A transformer backbone with a linear value head on its last hidden state.

    ``model`` is a Hugging Face causal LM (``AutoModelForCausalLM``) or its bare decoder. Only
    the decoder is kept (``model.base_model``, e.g. ``LlamaForCausalLM.model``): calling it
    gives the final hidden states (after the last norm) without ever computing the [B, P+T, V]
    vocabulary logits, and the LM head's weights are not held twice. A model without a separate
    base model is called with ``output_hidden_states=True`` and ``logits_to_keep=1`` instead.

    The head ``nn.Linear(hidden_size, 1)`` is float32 whatever the backbone's dtype (a bf16
    value is too coarse for a regression target), and starts at zero weight and bias: every
    initial value is exactly 0. A randomly initialized head would start from arbitrary values
    of the order of the hidden states' norm (which grows with the width), feed that noise into
    the first advantages, and send large value-loss gradients into the backbone; with V = 0
    the first GAE advantages are the (gamma * lam)-discounted rewards-to-go, i.e. no baseline
    rather than a random one. A consequence: while the head is exactly zero,
    dV/dh = 0, so only the head gets a gradient on the first step; the backbone starts learning
    from the second.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        base = getattr(model, "base_model", model)
        self.backbone = base if isinstance(base, nn.Module) else model
        # A model that is its own base but has an LM head returns logits, not hidden states.
        head = getattr(self.backbone, "get_output_embeddings", lambda: None)()
        self._returns_logits = head is not None
        self.config = model.config  # type: ignore[union-attr]
        self.head = nn.Linear(_hidden_size(self.config), 1, dtype=torch.float32)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def completion_hidden_states(self, batch: RolloutBatch) -> torch.Tensor:
        """The last hidden state that predicts each completion token, [B, T, H]."""
        width = batch.completion_ids.shape[1]
        prompt_width = batch.prompt_ids.shape[1]
        if prompt_width == 0:
            raise RewardlabError("ValueModel needs at least one prompt column to value token 0")
        input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
        attention = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
        # As forward_completion_logits: positions count real tokens only, so left padding of
        # the prompt changes nothing.
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        kwargs = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "position_ids": position_ids,
            "use_cache": False,
        }
        if self._returns_logits:  # keep one logit column: the vocabulary logits are not needed
            out = self.backbone(**kwargs, output_hidden_states=True, logits_to_keep=1)
            hidden = out.hidden_states[-1]
        else:
            hidden = self.backbone(**kwargs).last_hidden_state
        return hidden[:, prompt_width - 1 : prompt_width + width - 1, :]

    def completion_values(self, batch: RolloutBatch) -> torch.Tensor:
        """V(prompt + completion[:t]) for each completion position t, [B, T] float32; 0 on
        padding (its values would be of states after the end of the completion)."""
        hidden = self.completion_hidden_states(batch)
        values = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)
        return values * batch.completion_mask.to(values.dtype)

    def forward(self, batch: RolloutBatch) -> torch.Tensor:
        return self.completion_values(batch)


def _plain_copy(policy: nn.Module) -> nn.Module:
    """A deep copy of the policy's backbone with any LoRA adapter merged into the weights."""
    if is_lora(policy):
        # Copy first: merge_and_unload rewrites the model in place, and the policy must keep
        # its adapter.
        return copy.deepcopy(policy).merge_and_unload()  # type: ignore[operator]
    base = getattr(policy, "base_model", policy)
    # Copy only the decoder where there is one: the LM head is not needed by the critic.
    return copy.deepcopy(base if isinstance(base, nn.Module) else policy)


def make_value_model(policy: nn.Module) -> ValueModel:
    """A critic initialized from the policy: the same (LoRA-merged) backbone, zero head.

    The backbone is a deep copy, fully trainable (also where the policy's base weights are
    frozen under LoRA), and shares no tensor with the policy. Its weights are the merged ones
    (base + LoRA delta) at the moment of the call.
    """
    critic = ValueModel(_plain_copy(policy))
    for param in critic.parameters():
        param.requires_grad_(True)
    critic.zero_grad(set_to_none=True)  # a deep copy also copies the policy's .grad tensors
    critic.train(policy.training)
    return critic


def load_value_model(config: ModelConfig, *, seed: int = 0) -> ValueModel:
    """A critic whose backbone is loaded by name (``model.name``; LoRA settings are ignored:
    the critic trains every weight)."""
    path = resolve_model_path(config.name, seed=seed)
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except OSError as e:
        raise RewardlabError(f"critic model '{config.name}' could not be loaded: {e}") from None
    return ValueModel(model)
