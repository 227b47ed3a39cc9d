"""Baselines trained, evaluated and saved by the same pipeline as BDH: the GPT-2 decoder (`GPT`)."""

from .gpt import GPT, GPTConfig, GPTState

__all__ = ["GPT", "GPTConfig", "GPTState"]
