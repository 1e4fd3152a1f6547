"""The agent side of the online loop: collect a batch of episodes with per-turn credit, and
evaluate the policy on held-out episodes.

``trainers/online.py`` calls ``collect`` instead of its single-turn rollout when the config
has an ``agent:`` section; everything after (reference and old log-probs, KL, token masks,
the policy loss, checkpoints, resume) is the same loop. The advantage comes from
``agent.credit`` (the ``turn_credit`` axis): per-turn advantages, copied onto each turn's
tokens; observation tokens carry none and are outside the loss mask.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardlab.agents.env import Row
from rewardlab.agents.progress import ProgressEstimator
from rewardlab.agents.rollout import (
    Conversation,
    Episode,
    TurnInfo,
    demonstration,
    environment_factory,
    per_token,
    run_episodes,
    to_batch,
)
from rewardlab.algorithms.turn_credit import TURN_CREDIT
from rewardlab.batch import RolloutBatch
from rewardlab.config import AgentConfig, RewardSpec, RunConfig, SFTConfig
from rewardlab.errors import ConfigError
from rewardlab.rewards import RewardSource, combine_rewards, reward_metrics, score_rows
from rewardlab.rollout.hf import SamplingParams
from rewardlab.trainers.evaluate import write_samples

ENV_REWARD = "task"  # in agent runs the reward named `task` is the environment's own


@dataclass
class AgentRuntime:
    """What an agent run keeps across steps: the environment maker and, for ``spa``, the
    progress estimator (checkpointed with the run)."""

    config: AgentConfig
    make_env: Any
    env_weight: float
    progress: ProgressEstimator | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"progress": self.progress.state_dict()} if self.progress is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.load_state_dict(state["progress"])


def make_runtime(config: RunConfig | SFTConfig, policy: Any) -> AgentRuntime:
    assert config.agent is not None
    agent = config.agent
    env_weight = sum(r.weight for r in config.rewards if r.name == ENV_REWARD)
    progress = None
    if "progress" in TURN_CREDIT.get(agent.credit.name).inputs:
        dim = int(policy.config.hidden_size)
        progress = ProgressEstimator(dim, hidden=agent.progress.hidden, lr=agent.progress.lr)
    return AgentRuntime(agent, environment_factory(agent), env_weight, progress)


def extra_reward_specs(config: RunConfig) -> list[RewardSpec]:
    """The configured rewards other than the environment's (scored on the whole episode)."""
    return [r for r in config.rewards if r.name != ENV_REWARD]


def sampling(config: RunConfig | SFTConfig, greedy: bool = False, temperature: float | None = None) -> SamplingParams:
    return SamplingParams(
        n=1,
        temperature=temperature or config.rollout.temperature,
        top_p=config.rollout.top_p,
        max_new_tokens=config.rollout.max_new_tokens,
        greedy=greedy,
    )


# --------------------------------------------------------------------------- collect


def collect(
    policy: Any,
    tokenizer: Any,
    rows: list[Row],
    sources: list[RewardSource],
    config: RunConfig,
    runtime: AgentRuntime,
) -> tuple[RolloutBatch, dict[str, float]]:
    """This step's episodes as a batch with rewards and per-token advantages set."""
    n = config.rollout.num_generations
    episodes = run_episodes(policy, tokenizer, rows, n, runtime.make_env, runtime.config, sampling(config))
    batch, turns = to_batch(episodes, tokenizer.pad_token_id)
    scores = episode_rewards(episodes, rows, turns, sources, runtime, n)
    batch.scores = scores
    batch.rewards = turns.rewards.sum(-1)
    metrics = episode_metrics(episodes, batch) | reward_metrics(scores)
    credit = runtime.config.credit
    assert credit.name is not None
    fields: dict[str, Any] = {
        "turn_rewards": turns.rewards,
        "turn_mask": turns.mask,
        "group": batch.group,
        "anchors": turns.anchors,
        "valid": turns.valid,
    }
    inputs = TURN_CREDIT.get(credit.name).inputs
    if "progress" in inputs:
        fields["progress"], metrics["agent/progress_loss"] = progress_estimates(policy, batch, turns, runtime)
    if "info_gain" in inputs:
        fields["info_gain"] = information_gain(policy, tokenizer, episodes, runtime, config.rollout.temperature)
        metrics["agent/info_gain"] = float((fields["info_gain"] * turns.mask).sum() / turns.mask.sum().clamp(min=1))
    turn_advantages = TURN_CREDIT.call(credit.name, fields, credit.params)
    batch.advantages = per_token(turn_advantages.float(), turns.turn_of)
    if credit.name == "gigpo":
        metrics["agent/anchor_grouped"] = grouped_fraction(turns, batch.group)
    return batch, metrics


def episode_rewards(
    episodes: list[Episode],
    rows: list[Row],
    turns: TurnInfo,
    sources: list[RewardSource],
    runtime: AgentRuntime,
    n: int,
) -> dict[str, torch.Tensor]:
    """Sets ``turns.rewards`` to what training uses (the environment's rewards times the
    ``task`` weight, plus the other sources' weighted score on the last turn) and returns the
    per-source scores [B] for metrics."""
    env_return = turns.rewards.sum(-1)
    turns.rewards = turns.rewards * runtime.env_weight
    scores = {ENV_REWARD: env_return}
    if sources:
        transcripts = ["\n".join(e.actions()) for e in episodes]
        extra = score_rows(sources, rows, transcripts, n)
        scores |= extra
        bonus = combine_rewards(extra, {s.name: s.weight for s in sources})
        last = (turns.mask.sum(-1) - 1).clamp(min=0).long()
        turns.rewards[torch.arange(len(episodes)), last] += bonus * (turns.mask.sum(-1) > 0)
    return scores


def grouped_fraction(turns: TurnInfo, group: torch.Tensor) -> float:
    """The fraction of real turns whose anchor state some other turn of its group shares
    (GiGPO's step groups of size > 1)."""
    keys = group[:, None] * (int(turns.anchors.max()) + 2) + turns.anchors
    real = turns.mask.bool()
    values, counts = torch.unique(keys[real], return_counts=True)
    shared = dict(zip(values.tolist(), counts.tolist(), strict=True))
    flags = [shared[k] > 1 for k in keys[real].tolist()]
    return sum(flags) / max(1, len(flags))


def episode_metrics(episodes: list[Episode], batch: RolloutBatch) -> dict[str, float]:
    size = max(1, len(episodes))
    assert batch.rewards is not None
    turns = sum(e.turns for e in episodes)
    invalid = sum(e.turns - sum(e.valid) for e in episodes)
    return {
        "reward": float(batch.rewards.mean()),
        "reward/std": float(batch.rewards.std()) if batch.size > 1 else 0.0,
        "agent/success": sum(e.success for e in episodes) / size,
        "agent/turns": turns / size,
        "agent/invalid_actions": invalid / max(1, turns),
        "agent/truncated": sum(e.truncated for e in episodes) / size,
        "agent/env_errors": float(sum(e.error is not None and not e.timed_out for e in episodes)),
        "agent/env_timeouts": float(sum(e.timed_out for e in episodes)),
        "completion_length": float(batch.completion_mask.sum(-1).float().mean()),
        "agent/policy_tokens": float(batch.loss_mask.sum(-1).float().mean()) if batch.loss_mask is not None else 0.0,
    }


# --------------------------------------------------------------------------- credit inputs


@torch.no_grad()
def turn_features(policy: Any, batch: RolloutBatch, turns: TurnInfo) -> torch.Tensor:
    """[B, K, H]: the policy's last hidden state averaged over each turn's tokens (detached),
    the progress estimator's input."""
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    attention = torch.cat([batch.prompt_mask, batch.completion_mask], 1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    was_training = policy.training
    policy.eval()
    out = policy(input_ids=ids, attention_mask=attention, position_ids=positions, output_hidden_states=True, use_cache=False)
    policy.train(was_training)
    hidden = out.hidden_states[-1][:, batch.prompt_ids.shape[1] :].float()  # [B, T, H]
    k = turns.mask.shape[1]
    one_hot = torch.nn.functional.one_hot(turns.turn_of.clamp(min=0), k).float() * (turns.turn_of >= 0)[..., None]
    sums = torch.einsum("btk,bth->bkh", one_hot, hidden)
    counts = one_hot.sum(1)[..., None].clamp(min=1)
    return sums / counts


def progress_estimates(
    policy: Any, batch: RolloutBatch, turns: TurnInfo, runtime: AgentRuntime
) -> tuple[torch.Tensor, float]:
    """SPA-RL: fit the progress estimator on this batch's episodes (per-turn contributions
    summing to the outcome), then predict each turn's contribution."""
    assert runtime.progress is not None
    features = turn_features(policy, batch, turns)
    outcome = turns.rewards.sum(-1)
    loss = runtime.progress.fit(features, turns.mask, outcome, steps=runtime.config.progress.fit_steps)
    return runtime.progress.predict(features, turns.mask).detach(), float(loss)


@torch.no_grad()
def information_gain(
    policy: Any, tokenizer: Any, episodes: list[Episode], runtime: AgentRuntime, temperature: float
) -> torch.Tensor:
    """IGPO's turn signal [B, K]: p(answer | history after turn k) - p(answer | history
    before it), the correct final answer teacher-forced as the policy's next
    turn (``Environment.answer_text``), with p the geometric mean of its token probabilities, exp(mean log p) (the paper's
    probability difference, the default of the authors' code; their ``log_prob_diff`` option
    would subtract the mean log-probs instead)."""
    from rewardlab.models.logprobs import forward_completion_logits, token_logprobs

    convo = Conversation(tokenizer, runtime.config.chat_template)
    prefixes, answers, owners = [], [], []
    for i, episode in enumerate(episodes):
        text = episode.env.answer_text()
        if text is None:
            raise ConfigError(
                f"agent.credit: igpo needs the text of a correct final answer, and environment "
                f"'{runtime.config.env}' has none (Environment.answer_text); use another credit"
            )
        answer = convo.action_ids(text)
        for cut in episode.turn_starts()[: episode.turns + 1]:
            prefixes.append(episode.prompt_ids + episode.ids[:cut])
            answers.append(answer)
            owners.append(i)
    logps: list[float] = []
    chunk = 32
    for lo in range(0, len(prefixes), chunk):
        part = _scoring_batch(prefixes[lo : lo + chunk], answers[lo : lo + chunk], tokenizer.pad_token_id)
        logits = forward_completion_logits(policy, part, temperature)
        lp = token_logprobs(logits, part.completion_ids) * part.completion_mask
        mean = lp.sum(-1) / part.completion_mask.sum(-1).clamp(min=1)
        logps += mean.exp().tolist()
    k = max(1, max(e.turns for e in episodes))
    gain = torch.zeros((len(episodes), k))
    at = 0
    for i, episode in enumerate(episodes):
        values = logps[at : at + episode.turns + 1]
        at += episode.turns + 1
        for turn in range(min(episode.turns, len(values) - 1)):
            gain[i, turn] = values[turn + 1] - values[turn]
    assert at == len(owners)
    return gain


def _scoring_batch(prefixes: list[list[int]], answers: list[list[int]], pad_id: int) -> RolloutBatch:
    from rewardlab.rollout.hf import pad_left

    prompt_ids, prompt_mask = pad_left(prefixes, pad_id)
    width = max(len(a) for a in answers)
    ids = torch.full((len(answers), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(answers), width), dtype=torch.long)
    for i, a in enumerate(answers):
        ids[i, : len(a)] = torch.tensor(a)
        mask[i, : len(a)] = 1
    size = len(answers)
    return RolloutBatch(prompt_ids, prompt_mask, ids, mask, torch.zeros(size, dtype=torch.long), torch.zeros(size, dtype=torch.bool))


# --------------------------------------------------------------------------- evaluation


def evaluate_agent(
    policy: Any,
    tokenizer: Any,
    rows: list[Row],
    config: RunConfig | SFTConfig,
    runtime: AgentRuntime,
    seed: int,
    run_dir: Path | None,
    step: int,
) -> dict[str, float]:
    """Held-out episodes: greedy success rate, sampled success over ``eval.num_samples`` per
    row, mean turns and invalid actions; transcripts of the first greedy episodes saved."""
    torch.manual_seed(seed)
    greedy = run_episodes(policy, tokenizer, rows, 1, runtime.make_env, runtime.config, sampling(config, greedy=True))
    samples = config.eval.num_samples or config.eval.pass_k
    sampled = run_episodes(
        policy, tokenizer, rows, samples, runtime.make_env, runtime.config, sampling(config, temperature=config.eval.temperature)
    )
    metrics = {
        "eval/success": _mean([e.success for e in greedy]),
        "eval/success_sampled": _mean([e.success for e in sampled]),
        "eval/turns": _mean([e.turns for e in greedy]),
        "eval/return": _mean([sum(e.turn_rewards) for e in greedy]),
        "eval/invalid_actions": sum(e.turns - sum(e.valid) for e in greedy) / max(1, sum(e.turns for e in greedy)),
    }
    if run_dir is not None and config.logging.samples:
        write_transcripts(run_dir, step, greedy[: config.logging.samples])
    return metrics


def _mean(values: list[float] | list[bool] | list[int]) -> float:
    return float(sum(values)) / max(1, len(values))


def write_transcripts(run_dir: Path, step: int, episodes: list[Episode]) -> None:
    """Greedy episodes to ``samples/step-<step>.jsonl`` (one line per episode, its messages),
    written atomically like every run's samples, so an evaluation redone after a resume
    replaces its file instead of adding to it."""
    records = [
        {"step": step, "messages": e.messages, "turn_rewards": e.turn_rewards, "success": e.success, "error": e.error}
        for e in episodes
    ]
    write_samples(run_dir, step, records)


# --------------------------------------------------------------------------- SFT warm start


def demonstration_examples(
    rows: list[Row], agent: AgentConfig, tokenizer: Any, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """Expert episodes as SFT examples: token ids and labels that are -100 everywhere but on
    the expert's own turns (the policy learns its actions, not the environment's replies).
    ``agent.demo_noise`` makes some turns random, drawn from a generator fixed by ``seed``."""
    make_env = environment_factory(agent)
    convo = Conversation(tokenizer, agent.chat_template)
    rng = random.Random(f"demo-noise/{seed}") if agent.demo_noise > 0 else None
    examples = []
    for row in rows:
        episode = demonstration(row, make_env, convo, agent, rng)
        labels = [t if turn >= 0 else -100 for t, turn in zip(episode.ids, episode.turn_of, strict=True)]
        examples.append((episode.prompt_ids + episode.ids, [-100] * len(episode.prompt_ids) + labels))
    return examples


def expert_success(rows: list[Row], agent: AgentConfig, tokenizer: Any) -> float:
    """The share of rows the expert solves within ``agent.max_turns`` (a sanity check)."""
    make_env = environment_factory(agent)
    convo = Conversation(tokenizer, agent.chat_template)
    return _mean([demonstration(row, make_env, convo, agent).success for row in rows])
