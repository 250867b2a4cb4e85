"""Monologue: compile a trained PyTorch GPT into a private, in-browser reasoning chat."""

__version__ = "0.1.0"
