"""Engines: what turns an agent's inputs into outputs.

`Engine` is the base class; `flock_llm.engines.llm.LLMEngine` (litellm) and
`flock_llm.engines.dspy.DSPyEngine` are imported from their own modules so
that `import flock_llm` stays light.
"""

from ._base import Engine, EngineContext, EvalInputs, EvalResult, ItemFailure, Output

__all__ = ["Engine", "EngineContext", "EvalInputs", "EvalResult", "ItemFailure", "Output"]
