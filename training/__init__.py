"""Training side of Monologue: the nanochat-style GPT, its data and its train loop."""
