"""Multi-turn episodes: the policy and its environments take turns until each episode ends.

Each episode's tokens are kept exactly as the policy produced them: its own turns are the ids
it sampled (through EOS), and an observation is appended as the ids of the chat template's
rendering of that message (the text the template adds between the two, as verl's multi-turn
rollout does), so the sequence the learner scores is the one the policy saw, without a
re-tokenization of the transcript. ``turn_of`` marks the policy's tokens with their turn
(-1 on observation tokens), which becomes the loss mask: only the model's own tokens train.

Environment calls run concurrently in daemon threads with a time limit; an environment that
raises or hangs ends its episode with an error (counted and logged), never the run.
"""

from __future__ import annotations

import importlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rewardlab.agents.env import ENVIRONMENTS, Environment, Row, StepResult
from rewardlab.batch import RolloutBatch
from rewardlab.config import AgentConfig
from rewardlab.errors import ConfigError, did_you_mean
from rewardlab.rollout.hf import SamplingParams, generate_from_ids, pad_left

# --------------------------------------------------------------------------- environments


def environment_factory(config: AgentConfig) -> Callable[[], Environment]:
    """A maker of fresh environments for ``agent.env`` (a built-in name or ``module:factory``)."""
    import rewardlab.agents.envs  # noqa: F401  (registers the built-in environments)

    name = config.env
    if name in ENVIRONMENTS:
        factory: Callable[..., Environment] = ENVIRONMENTS[name].factory
    elif ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"agent.env: cannot import '{name}': {e}") from None
    else:
        raise ConfigError(
            f"agent.env: unknown environment '{name}'{did_you_mean(name, ENVIRONMENTS)}; choose one "
            f"of {', '.join(sorted(ENVIRONMENTS))} or give module:factory"
        )
    try:
        factory(**config.env_args)
    except TypeError as e:
        raise ConfigError(f"agent.env_args: environment '{name}' does not take these args: {e}") from None
    return lambda: factory(**config.env_args)


@dataclass
class Outcome:
    """What one guarded environment call gave: a value, or why it gave none."""

    value: Any = None
    error: str | None = None
    timed_out: bool = False


def call_all(calls: Sequence[Callable[[], Any]], timeout: float | None, workers: int) -> list[Outcome]:
    """Run ``calls`` concurrently (at most ``workers`` at once), each within ``timeout`` seconds.

    Daemon threads, not a pool: a call that never returns cannot be killed, and a pool's
    worker would then block the interpreter's exit; a daemon thread is simply abandoned.
    """
    outcomes = [Outcome() for _ in calls]

    def run(i: int) -> None:
        try:
            outcomes[i].value = calls[i]()
        except Exception as e:  # noqa: BLE001 - an environment's bug ends its episode, not the run
            outcomes[i].error = f"{type(e).__name__}: {e}"

    for lo in range(0, len(calls), workers):
        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(lo, min(lo + workers, len(calls)))]
        for t in threads:
            t.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for i, t in zip(range(lo, lo + len(threads)), threads, strict=True):
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                outcomes[i] = Outcome(error=f"timed out after {timeout} s", timed_out=True)
    return outcomes


# --------------------------------------------------------------------------- conversation tokens


class Conversation:
    """Turns a conversation into token ids the way the policy sees it (chat template or not)."""

    def __init__(self, tokenizer: Any, use_template: bool) -> None:
        self.tokenizer = tokenizer
        self.templated = use_template and getattr(tokenizer, "chat_template", None) is not None

    def prompt_ids(self, first_message: str) -> list[int]:
        if not self.templated:
            return list(self.tokenizer(first_message, add_special_tokens=True)["input_ids"])
        messages = [{"role": "user", "content": first_message}]
        return self._ids(self._render(messages, generation_prompt=True), special=False)

    def observation_ids(self, messages: list[dict[str, str]], observation: dict[str, str]) -> list[int]:
        """Ids of ``observation`` after ``messages`` (which end with the policy's turn), up to
        the start of the policy's next turn."""
        if not self.templated:
            return self._ids(f"\n{observation['content']}\n", special=False)
        before = self._render(messages, generation_prompt=False)
        after = self._render([*messages, observation], generation_prompt=True)
        if not after.startswith(before):
            # A template that rewrites earlier turns (e.g. drops reasoning) has no clean delta:
            # render the observation on its own.
            lone = self._render([observation], generation_prompt=True)
            return self._ids(lone, special=False)
        return self._ids(after[len(before) :], special=False)

    def action_ids(self, text: str) -> list[int]:
        """A demonstrated turn as the policy would sample it: its text, then EOS."""
        return self._ids(text, special=False) + [self.tokenizer.eos_token_id]

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return str(
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        )

    def _ids(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])


# --------------------------------------------------------------------------- episodes


@dataclass
class Episode:
    """One episode in tokens and per-turn records."""

    row: Row
    group: int
    env: Environment
    prompt_ids: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # every token after the prompt
    turn_of: list[int] = field(default_factory=list)  # turn index on the policy's tokens, -1 else
    messages: list[dict[str, str]] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    anchors: list[str] = field(default_factory=list)  # state key each turn acted from
    valid: list[float] = field(default_factory=list)
    done: bool = False
    success: bool = False
    truncated: bool = False  # ended by the turn or token limit, not by the environment
    error: str | None = None
    timed_out: bool = False

    @property
    def finished(self) -> bool:
        return self.done or self.truncated or self.error is not None

    @property
    def turns(self) -> int:
        return len(self.turn_rewards)

    def turn_starts(self) -> list[int]:
        """Where each of the policy's turns starts in ``ids``, then ``len(ids)``: the prefixes
        after 0, 1, ... turns (information gain conditions on them)."""
        starts = [i for i, t in enumerate(self.turn_of) if t >= 0 and (i == 0 or self.turn_of[i - 1] != t)]
        return [*starts, len(self.ids)]

    def actions(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "assistant"]

    def add_turn(self, ids: list[int], text: str, turn: int) -> None:
        self.ids += ids
        self.turn_of += [turn] * len(ids)
        self.messages.append({"role": "assistant", "content": text})

    def add_observation(self, ids: list[int], message: dict[str, str]) -> None:
        self.ids += ids
        self.turn_of += [-1] * len(ids)
        self.messages.append(message)


def _state_key(env: Environment) -> str:
    try:
        return env.state_key()
    except Exception as e:  # noqa: BLE001 - GiGPO needs keys; an environment without them acts from unique states
        return f"<no state key: {type(e).__name__}:{id(env)}>"


def start_episodes(
    rows: list[Row], n: int, make_env: Callable[[], Environment], convo: Conversation, config: AgentConfig
) -> list[Episode]:
    """``n`` episodes per row (adjacent, one group per row), each reset in its environment."""
    episodes = [Episode(row, g, make_env()) for g, row in enumerate(rows) for _ in range(n)]
    firsts = call_all([lambda e=e: e.env.reset(e.row) for e in episodes], config.step_timeout, config.max_workers)
    for episode, first in zip(episodes, firsts, strict=True):
        if first.error is not None:
            episode.error, episode.timed_out = f"reset: {first.error}", first.timed_out
            first = Outcome(value=str(episode.row.get("prompt", "")))
        message = {"role": "user", "content": str(first.value)}
        episode.messages.append(message)
        episode.prompt_ids = convo.prompt_ids(message["content"])
    return episodes


def play_turn(
    episodes: list[Episode],
    actions: list[tuple[list[int], str]],
    turn: int,
    convo: Conversation,
    config: AgentConfig,
) -> None:
    """Apply one turn of each (active) episode: record the action, step the environments
    concurrently, then record reward, anchor state and the next observation."""
    for episode, (ids, text) in zip(episodes, actions, strict=True):
        episode.anchors.append(_state_key(episode.env))
        episode.add_turn(ids, text, turn)
    results = call_all(
        [lambda e=e, a=a[1]: e.env.step(a) for e, a in zip(episodes, actions, strict=True)],
        config.step_timeout,
        config.max_workers,
    )
    for episode, outcome in zip(episodes, results, strict=True):
        result = outcome.value
        if outcome.error is None and not isinstance(result, StepResult):
            outcome = Outcome(error=f"step returned {type(result).__name__}, not a StepResult")
        if outcome.error is not None:
            episode.error, episode.timed_out = outcome.error, outcome.timed_out
            episode.turn_rewards.append(config.error_reward)
            episode.valid.append(0.0)
            continue
        assert isinstance(result, StepResult)
        episode.turn_rewards.append(float(result.reward))
        episode.valid.append(float(result.info.get("valid", True)))
        if result.done:
            episode.done = True
            episode.success = bool(result.info.get("success", False))
            continue
        if turn + 1 >= config.max_turns:  # no next turn to show the observation to
            episode.truncated = True
            continue
        message = {"role": result.role, "content": result.observation}
        episode.add_observation(convo.observation_ids(episode.messages, message), message)


def run_episodes(
    policy: Any,
    tokenizer: Any,
    rows: list[Row],
    n: int,
    make_env: Callable[[], Environment],
    config: AgentConfig,
    params: SamplingParams,
) -> list[Episode]:
    """Play ``n`` episodes per row to the end: each turn, every active episode's whole
    history is one prompt of a batched ``generate`` (one sample each)."""
    convo = Conversation(tokenizer, config.chat_template)
    episodes = start_episodes(rows, n, make_env, convo, config)
    one = SamplingParams(
        n=1, temperature=params.temperature, top_p=params.top_p, max_new_tokens=params.max_new_tokens, greedy=params.greedy
    )
    limit = episode_token_limit(policy, config)
    for turn in range(config.max_turns):
        active = [e for e in episodes if not e.finished]
        for episode in active:
            if len(episode.prompt_ids) + len(episode.ids) + params.max_new_tokens > limit:
                episode.truncated = True
        active = [e for e in active if not e.finished]
        if not active:
            break
        ids, mask = pad_left([e.prompt_ids + e.ids for e in active], tokenizer.pad_token_id)
        out = generate_from_ids(policy, tokenizer, ids, mask, one)
        actions = []
        for row_ids, row_mask in zip(out.completion_ids.tolist(), out.completion_mask.tolist(), strict=True):
            kept = [t for t, m in zip(row_ids, row_mask, strict=True) if m]
            actions.append((kept, tokenizer.decode(kept, skip_special_tokens=True)))
        play_turn(active, actions, turn, convo, config)
    return episodes


def episode_token_limit(policy: Any, config: AgentConfig) -> int:
    """``agent.max_episode_tokens``, or the model's context if that is shorter: an episode
    whose next turn might not fit ends there, truncated."""
    context = getattr(getattr(policy, "config", None), "max_position_embeddings", None)
    return min(config.max_episode_tokens, int(context)) if context else config.max_episode_tokens


def demonstration(
    row: Row,
    make_env: Callable[[], Environment],
    convo: Conversation,
    config: AgentConfig,
    rng: random.Random | None = None,
) -> Episode:
    """The environment's expert playing one episode (an SFT warm-start example). With ``rng``
    and ``agent.demo_noise`` > 0, each turn is instead the environment's random action with
    that probability."""
    (episode,) = start_episodes([row], 1, make_env, convo, config)
    for turn in range(config.max_turns):
        if episode.finished:
            break
        if rng is not None and rng.random() < config.demo_noise:
            text = careless_action(episode.env, rng, config)
        else:
            text = episode.env.expert_action()
        play_turn([episode], [(convo.action_ids(text), text)], turn, convo, config)
    if episode.error is not None:
        raise ConfigError(f"agent.env: the expert of '{config.env}' failed on row {row!r}: {episode.error}")
    return episode


def careless_action(env: Environment, rng: random.Random, config: AgentConfig) -> str:
    """The environment's random action, or one message when it has none."""
    try:
        return env.random_action(rng)
    except NotImplementedError:
        raise ConfigError(
            f"agent.demo_noise: environment '{config.env}' has no random_action; "
            "define one or set agent.demo_noise: 0"
        ) from None


# --------------------------------------------------------------------------- batch


@dataclass
class TurnInfo:
    """Per-turn tensors of a batch of episodes, B episodes x K turns."""

    rewards: torch.Tensor  # [B, K] environment reward of each turn (+ final sources)
    mask: torch.Tensor  # [B, K] 1 on real turns
    anchors: torch.Tensor  # [B, K] state ids (equal = same state), -1 on padding
    valid: torch.Tensor  # [B, K] the action could be executed
    turn_of: torch.Tensor  # [B, T] turn of each completion token, -1 on observations/padding


def to_batch(episodes: list[Episode], pad_id: int) -> tuple[RolloutBatch, TurnInfo]:
    """The episodes as one ``RolloutBatch`` (completion = everything after the first prompt;
    ``loss_mask`` = the policy's own tokens) and their per-turn tensors."""
    prompt_ids, prompt_mask = pad_left([e.prompt_ids for e in episodes], pad_id)
    width = max(1, max(len(e.ids) for e in episodes))
    size = len(episodes)
    completion = torch.full((size, width), pad_id, dtype=torch.long)
    mask = torch.zeros((size, width), dtype=torch.long)
    turn_of = torch.full((size, width), -1, dtype=torch.long)
    for i, e in enumerate(episodes):
        completion[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
        mask[i, : len(e.ids)] = 1
        turn_of[i, : len(e.ids)] = torch.tensor(e.turn_of, dtype=torch.long)
    batch = RolloutBatch(
        prompt_ids,
        prompt_mask,
        completion,
        mask,
        torch.tensor([e.group for e in episodes]),
        torch.tensor([e.truncated for e in episodes]),
    )
    batch.loss_mask = (turn_of >= 0).long()
    return batch, turn_tensors(episodes, turn_of)


def turn_tensors(episodes: list[Episode], turn_of: torch.Tensor) -> TurnInfo:
    k = max(1, max(e.turns for e in episodes))
    size = len(episodes)
    rewards = torch.zeros((size, k))
    mask = torch.zeros((size, k))
    anchors = torch.full((size, k), -1, dtype=torch.long)
    valid = torch.zeros((size, k))
    ids: dict[str, int] = {}
    for i, e in enumerate(episodes):
        n = e.turns
        rewards[i, :n] = torch.tensor(e.turn_rewards)
        mask[i, :n] = 1
        valid[i, :n] = torch.tensor(e.valid)
        anchors[i, :n] = torch.tensor([ids.setdefault(key, len(ids)) for key in e.anchors], dtype=torch.long)
    return TurnInfo(rewards, mask, anchors, valid, turn_of)


def per_token(turn_values: torch.Tensor, turn_of: torch.Tensor) -> torch.Tensor:
    """[B, T]: each policy token gets its turn's value; observation tokens and padding get 0."""
    index = turn_of.clamp(min=0)
    picked = turn_values.gather(1, index.clamp(max=turn_values.shape[1] - 1))
    return torch.where(turn_of >= 0, picked, torch.zeros_like(picked))
