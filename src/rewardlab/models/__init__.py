"""Model loading: the built-in tiny model, local HF folders, hub ids, SmolLM2 and LoRA."""
