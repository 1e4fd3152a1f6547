"""Loading and rendering training data (prompt and SFT datasets)."""
