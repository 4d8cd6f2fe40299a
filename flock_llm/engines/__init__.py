"""Engines: what turns an agent's inputs into outputs.

`Engine` is the base class; `flock_llm.engines.llm.LLMEngine` (litellm) and
`flock_llm.engines.dspy.DSPyEngine` are imported from their own modules so
that `import flock_llm` stays light. The services the runtime hands to engines
through `EngineContext` are public here: `CostLedger` (a budget in US dollars),
`JobJournal` and `JobRecord` (where provider batch jobs are recorded),
`RateWindow` and `RateWindows` (per-minute request and token windows).

An engine of your own that calls a model subclasses `ModelEngine` and sends each call through its call shell,
`self.shell(ctx, model).call(Ask(...), send, settled)`: the shell paces it (`max_concurrent_requests`,
`requests_per_minute`, `tokens_per_minute`), holds it against the budgets, retries it (`RetryPolicy`) behind the
circuit breaker (`BreakerPolicy`) and records it (`Usage`, `CallRecord`). `Settled` says what an answer consumed;
a transport raises `Resend` to have its request sent again at once. See docs/engines.md.

Inside, the modules are grouped by what a model call passes through:
`_ladder/` (the fallback ladder, parsing, answer planning, structured-output
forms), `_calls/` (the call shell, retry, breaker, spend, prices, rate windows,
call records, model resolution), `_tiers/` (standard, flex and batch tiers,
provider batch jobs, the in-memory job journal) and `offline/` (the offline
model).
"""

from ._base import Engine, EngineContext, EvalInputs, EvalResult, ItemFailure, Output
from ._calls.breaker import BreakerPolicy, BreakerStats
from ._calls.engine import ModelEngine
from ._calls.models import OFFLINE_MODEL, load_litellm, resolve_model
from ._calls.prices import CostLedger, TokenPrices
from ._calls.rate import RateWindow, RateWindows
from ._calls.record import CALL_COUNTERS, CallRecord, Usage, cancelled_run, cancelled_usage
from ._calls.retry import RetryPolicy
from ._calls.settled import Settled
from ._calls.shell import Ask, CallShell, Resend
from ._tiers.journal import JobJournal, JobRecord

__all__ = [
    "CALL_COUNTERS",
    "OFFLINE_MODEL",
    "Ask",
    "BreakerPolicy",
    "BreakerStats",
    "CallRecord",
    "CallShell",
    "CostLedger",
    "Engine",
    "EngineContext",
    "EvalInputs",
    "EvalResult",
    "ItemFailure",
    "JobJournal",
    "JobRecord",
    "ModelEngine",
    "Output",
    "RateWindow",
    "RateWindows",
    "Resend",
    "RetryPolicy",
    "Settled",
    "TokenPrices",
    "Usage",
    "cancelled_run",
    "cancelled_usage",
    "load_litellm",
    "resolve_model",
]
