"""Rollout engines: prompts -> n completions each."""
