"""Engines: what turns an agent's inputs into outputs.

`Engine` is the base class; `flock_llm.engines.llm.LLMEngine` (litellm) and
`flock_llm.engines.dspy.DSPyEngine` are imported from their own modules so
that `import flock_llm` stays light. The services the runtime hands to engines
through `EngineContext` are public here: `CostLedger` (a budget in US dollars),
`JobJournal` and `JobRecord` (where provider batch jobs are recorded),
`RateWindow` and `RateWindows` (per-minute request and token windows).

Inside, the modules are grouped by what a model call passes through:
`_ladder/` (the fallback ladder, parsing, answer planning, structured-output
forms), `_calls/` (the call shell, retry, breaker, spend, prices, rate windows,
call records, model resolution), `_tiers/` (standard, flex and batch tiers,
provider batch jobs, the in-memory job journal) and `offline/` (the offline
model).
"""

from ._base import Engine, EngineContext, EvalInputs, EvalResult, ItemFailure, Output
from ._calls.models import OFFLINE_MODEL, load_litellm, resolve_model
from ._calls.prices import CostLedger
from ._calls.rate import RateWindow, RateWindows
from ._calls.record import CALL_COUNTERS
from ._tiers.journal import JobJournal, JobRecord

__all__ = [
    "CALL_COUNTERS",
    "OFFLINE_MODEL",
    "CostLedger",
    "Engine",
    "EngineContext",
    "EvalInputs",
    "EvalResult",
    "ItemFailure",
    "JobJournal",
    "JobRecord",
    "Output",
    "RateWindow",
    "RateWindows",
    "load_litellm",
    "resolve_model",
]
