"""The `flock-llm` command line (also `python -m flock_llm`) and the review job behind it."""

from .main import main

__all__ = ["main"]
