"""flock_llm: batch processing with LLM agents on a typed blackboard.

from flock_llm import Flock, flock_type
from flock_llm.subscription import BatchSpec, JoinSpec
"""

from ._runtime.runner import FinishedRun
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
    StoreError,
    StoreUnavailableError,
)
from .metrics import BatchStats, FlushRecord, JoinExpiry, Metrics
from .orchestrator import Flock
from .registry import flock_type

__all__ = [
    "Agent",
    "Artifact",
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
    "Metrics",
    "ModelCallError",
    "ModelOutputError",
    "ProviderUnavailableError",
    "StoreError",
    "StoreUnavailableError",
    "flock_type",
]
