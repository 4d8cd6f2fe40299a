"""flock_llm: batch processing with LLM agents on a typed blackboard.

from flock_llm import BatchSpec, Flock, flock_type   # BatchSpec and JoinSpec also in flock_llm.subscription
"""

from ._runtime.work import FinishedRun
from .agent import Agent
from .artifact import Artifact, FailureRecord
from .errors import (
    BatchSpecWarning,
    BudgetExceededError,
    ClosedError,
    ConfigurationError,
    EngineError,
    FlockError,
    FlockWarning,
    ModelCallError,
    ModelOutputError,
    ProviderUnavailableError,
    ProviderUnreachableError,
    StoreError,
    StoreUnavailableError,
)
from .metrics import BatchStats, FlushRecord, JoinExpiry, Metrics
from .orchestrator import Flock
from .registry import flock_type
from .subscription import BatchSpec, JoinSpec

__all__ = [
    "Agent",
    "Artifact",
    "BatchSpec",
    "BatchSpecWarning",
    "BatchStats",
    "BudgetExceededError",
    "ClosedError",
    "ConfigurationError",
    "EngineError",
    "FailureRecord",
    "FinishedRun",
    "Flock",
    "FlockError",
    "FlockWarning",
    "FlushRecord",
    "JoinExpiry",
    "JoinSpec",
    "Metrics",
    "ModelCallError",
    "ModelOutputError",
    "ProviderUnavailableError",
    "ProviderUnreachableError",
    "StoreError",
    "StoreUnavailableError",
    "flock_type",
]
