"""rewardlab: reward modeling and policy optimization for language models."""

__version__ = "0.1.0"
