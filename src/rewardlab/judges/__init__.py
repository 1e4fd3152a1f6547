"""LLM judges over OpenAI-compatible chat endpoints, a local server, and master-key probes.

- :mod:`rewardlab.judges.client`: ``ChatClient`` (concurrency, timeouts, retries, cache);
- :mod:`rewardlab.judges.llm`: the ``llm_judge`` reward and the ``pairwise`` judge function;
- :mod:`rewardlab.judges.server`: ``serve(model)``, an OpenAI-compatible server on loopback;
- :mod:`rewardlab.judges.probe`: "One Token to Fool LLM-as-a-Judge" master-key probes.

Importing this package registers ``llm_judge`` in ``REWARD_FACTORIES``; the server is imported
lazily (it needs torch and transformers).
"""

from rewardlab.judges.client import ChatClient, JudgeError
from rewardlab.judges.llm import LLMJudgeReward, llm_judge, pairwise, parse_score, parse_winner
from rewardlab.judges.probe import MASTER_KEYS, ProbeReport, probe_judge

__all__ = [
    "MASTER_KEYS",
    "ChatClient",
    "JudgeError",
    "LLMJudgeReward",
    "ProbeReport",
    "llm_judge",
    "pairwise",
    "parse_score",
    "parse_winner",
    "probe_judge",
]
