"""The engine contract: what an agent's engine receives and returns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from .._error_text import describe_error
from .._vocabulary import FailureStage, FlushReason
from ..artifact import Artifact
from ..errors import ConfigurationError
from ..tracing import SpanHandle, Tracer

if TYPE_CHECKING:
    from ..quality.controller import QualityTarget
    from ..quality.shared import SizeStates
    from ..subscription import BatchSpec
    from ._calls.prices import CostLedger
    from ._calls.rate import RateWindows
    from ._tiers.journal import JobJournal

__all__ = ["EngineContext", "Engine", "EvalInputs", "EvalResult", "ItemFailure", "Output"]

log = logging.getLogger("flock_llm.engines")

T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class EngineContext:
    """What an engine knows about the run it serves. It holds no blackboard."""

    agent_name: str
    """The agent this run belongs to."""
    subscription_index: int = 0
    """Which of the agent's `consumes()` subscriptions delivered the inputs (0 for the first)."""
    description: str = ""
    """The agent's `.description(...)`; LLM engines put it in the prompt."""
    publishes: tuple[type[BaseModel], ...] = ()
    """The output types the agent declared."""
    is_batch: bool = False
    """True when the run is a flushed batch (`evaluate_batch`), False for one item."""
    flush_reason: FlushReason | None = None
    """"size", "timeout", "tokens", "shutdown" or "manual" for a batch; None otherwise."""
    batch_size: int = 1
    """How many items the run holds."""
    configured_size: int | None = None
    """The BatchSpec's `size` (None for a spec without one, or outside a batch)."""
    batch_id: str | None = None
    """The flushed batch's id: stable across a restart, so side effects can be keyed on it."""
    model: str | None = None
    """`Flock(model=...)`, for engines that resolve a model."""
    env: dict[str, str] = field(default_factory=dict, repr=False)
    """The environment the Flock read at construction (for model resolution)."""
    tracer: Tracer | None = field(default=None, repr=False, compare=False)
    """Where engines record spans (e.g. one per LLM call); None when tracing is off."""
    trace_parent: SpanHandle | None = field(default=None, repr=False, compare=False)
    """The span of this run: the parent of spans an engine records."""
    budget: CostLedger | None = field(default=None, repr=False, compare=False)
    """`Flock(budget_usd=)`: the spending every LLM call of the Flock is checked against (None: no cap)."""
    rate_windows: RateWindows | None = field(default=None, repr=False, compare=False)
    """Where per-minute limits are kept: this process's, or (Redis store) shared by every worker process."""
    jobs: JobJournal | None = field(default=None, repr=False, compare=False)
    """Where provider batch jobs are recorded before submission (the SQLite store's file; None: in memory)."""
    quality: QualityTarget | None = None
    """`BatchSpec(quality=...)` of the subscription: the quality target its batch size must hold (None: none)."""
    size_states: SizeStates | None = field(default=None, repr=False, compare=False)
    """Where batch-size controller states are kept: the store's (SQLite: across restarts; Redis: shared by every
    worker process), or None (the engine keeps them in memory)."""
    facts: Callable[[type[BaseModel], Sequence[str]], Mapping[str, Any]] | None = field(
        default=None, repr=False, compare=False
    )
    """Report facts (`report_facts=`): the values code computes for an output type from the items with these
    artifact ids; LLM engines put them in the prompt as data (see `flock_llm.quality.facts`)."""

    @property
    def efficiency(self) -> float | None:
        """`batch_size / configured_size`: how full the batch flushed (None without a configured size)."""
        return None if not self.configured_size else self.batch_size / self.configured_size


@dataclass(frozen=True, slots=True)
class EvalInputs:
    """The items of one run: one item, or a whole flushed batch.

    An item is one artifact, or one join group (a tuple of correlated artifacts).
    """

    items: tuple[tuple[Artifact, ...], ...]
    """The items, in arrival order: each a tuple of one artifact, or of a join group's artifacts."""

    @classmethod
    def of(cls, *artifacts: Artifact) -> EvalInputs:
        """One item per artifact (no joins)."""
        return cls(tuple((a,) for a in artifacts))

    @property
    def artifacts(self) -> list[Artifact]:
        """Every artifact of every item, in order."""
        return [a for item in self.items for a in item]

    @property
    def groups(self) -> list[tuple[Artifact, ...]]:
        """The join groups (each item as a tuple of artifacts)."""
        return list(self.items)

    @property
    def artifact_ids(self) -> list[str]:
        """The ids of every artifact, in order."""
        return [a.id for a in self.artifacts]

    def first_as(self, cls: type[T]) -> T | None:
        """The first payload of type `cls`, or None."""
        return next((a.payload for a in self.artifacts if isinstance(a.payload, cls)), None)

    def all_as(self, cls: type[T]) -> list[T]:
        """Every payload of type `cls`, in order."""
        return [a.payload for a in self.artifacts if isinstance(a.payload, cls)]

    def split(self) -> list[EvalInputs]:
        """One EvalInputs per item."""
        return [EvalInputs((item,)) for item in self.items]

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class Output:
    """One object to publish, and the input artifact ids it derives from (None: the whole run's inputs)."""

    obj: BaseModel
    """The object to publish; its type must be one the agent publishes."""
    derived_from: tuple[str, ...] | None = None
    """The ids of the input artifacts it was computed from; None: every input of the run."""


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """Inputs an engine could not process; the agent publishes a FailureRecord for them."""

    artifact_ids: tuple[str, ...]
    """The input artifacts that failed."""
    error_type: str
    """The exception's class name."""
    error: str
    """What went wrong (never the payload's values, never a key)."""
    stage: FailureStage = "engine"
    """Where it failed: see the failure stages in `flock_llm.errors`' reference."""

    @classmethod
    def from_exception(
        cls, exc: BaseException, artifact_ids: Iterable[str], *, stage: FailureStage = "engine"
    ) -> ItemFailure:
        """The failure of `artifact_ids`, described by `exc` (its type and a redacted message).

        Args:
            exc: the error that stopped these inputs.
            artifact_ids: the ids of the input artifacts it stopped.
            stage: where it happened.
        """
        return cls(tuple(artifact_ids), type(exc).__name__, describe_error(exc), stage)


@dataclass(frozen=True, slots=True)
class EvalResult:
    """What an engine returns: outputs to publish, failures to record, and usage figures."""

    outputs: tuple[Output, ...] = ()
    """What to publish."""
    failures: tuple[ItemFailure, ...] = ()
    """Inputs that could not be processed: each becomes a FailureRecord."""
    usage: dict[str, Any] = field(default_factory=dict)
    """Engine-specific figures (tokens, calls, cost, ...) merged into the agent's metrics."""

    @classmethod
    def from_object(cls, obj: BaseModel, *, derived_from: Sequence[str] | None = None) -> EvalResult:
        """A result that publishes one object.

        Args:
            obj: the object to publish.
            derived_from: the ids of the inputs it comes from, when only some of the run's; default: all of them.
        """
        return cls(outputs=(Output(obj, None if derived_from is None else tuple(derived_from)),))

    @classmethod
    def from_objects(cls, *objs: BaseModel) -> EvalResult:
        """A result that publishes `objs`, each derived from the whole run's inputs.

        Args:
            *objs: the objects to publish.
        """
        return cls(outputs=tuple(Output(obj) for obj in objs))

    @classmethod
    def empty(cls) -> EvalResult:
        """A result that publishes nothing (the inputs still count as consumed)."""
        return cls()

    @property
    def objects(self) -> list[BaseModel]:
        """The objects to publish, without their lineage."""
        return [out.obj for out in self.outputs]

    def with_lineage(self, artifact_ids: Sequence[str]) -> EvalResult:
        """Outputs without explicit lineage derive from `artifact_ids`."""
        ids = tuple(artifact_ids)
        return replace(
            self,
            outputs=tuple(o if o.derived_from is not None else Output(o.obj, ids) for o in self.outputs),
        )

    @staticmethod
    def merge(results: Iterable[EvalResult]) -> EvalResult:
        """One result holding every output and failure of `results`; numeric usage figures are added up."""
        outputs: list[Output] = []
        failures: list[ItemFailure] = []
        usage: dict[str, Any] = {}
        for result in results:
            outputs.extend(result.outputs)
            failures.extend(result.failures)
            for name, value in result.usage.items():
                usage[name] = usage.get(name, 0) + value if isinstance(value, (int, float)) else value
        return EvalResult(tuple(outputs), tuple(failures), usage)


class Engine:
    """Base class for engines.

    Override `evaluate()` (one item) and, for batch-aware work, `evaluate_batch()`
    (a whole flush). The default `evaluate_batch()` runs `evaluate()` per item
    with at most `max_item_concurrency` at once; an item whose `evaluate()`
    raises becomes an ItemFailure, the others still publish.
    """

    max_item_concurrency: int = 8

    def item_tokens(self, ctx: EngineContext, artifact: Artifact) -> int:
        """The prompt tokens `artifact` adds to a batch, for `BatchSpec(max_tokens=)`; counted once, as it enters.
        The default estimate is one token per 4 characters of its JSON (at least 1); LLM engines count with their
        model's tokenizer.

        Args:
            ctx: the run's context (agent, model).
            artifact: the item entering a batch.
        """
        return max(1, len(artifact.payload.model_dump_json()) // 4)

    def batch_token_budget(self, ctx: EngineContext, size: int | None) -> int | None:
        """The item tokens one batch may hold, for `BatchSpec(max_tokens="auto")` (`size`: the spec's size, if
        any), or None when the engine cannot tell (then "auto" is refused when the agent is defined).

        Args:
            ctx: the agent's context (its model and output types).
            size: the BatchSpec's `size`, if any.
        """
        return None

    def check_batch(self, agent: str, spec: BatchSpec) -> None:
        """Refuse, when the agent is defined, a BatchSpec this engine cannot serve. The base refuses
        `quality=` (a quality target steers by audits, which LLMEngine and DSPyEngine make).

        Args:
            agent: the agent's name (for the error text).
            spec: the subscription's BatchSpec.

        Raises:
            ConfigurationError: the spec asks for what the engine cannot do.
        """
        if spec.quality is not None:
            raise ConfigurationError(
                f"agent {agent!r}: BatchSpec(quality=...) steers the batch size by audited agreement, which "
                f"{type(self).__name__} does not measure; use LLMEngine(per_item=True) or DSPyEngine(per_item=True)"
            )

    def effective_batch_size(self, agent: str, subscription_index: int) -> int | None:
        """The batch size this engine currently wants for the subscription (`BatchSpec(quality=)`), below the
        configured one; None: the configured size (the base, and until the engine knows).

        Args:
            agent: the agent's name.
            subscription_index: which of the agent's subscriptions.
        """
        return None

    async def evaluate(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        """Process one item (one artifact, or one join group) and say what to publish.

        Args:
            ctx: what the engine knows about the run (agent, flush reason, batch size, ...).
            inputs: the item.

        Returns:
            The outputs to publish and any failures; an exception raised here becomes a failure record.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate()")

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        """Process a flushed batch. The default runs `evaluate()` per item, `max_item_concurrency` at a time.

        Args:
            ctx: what the engine knows about the run (`flush_reason`, `batch_size`, `efficiency`, `batch_id`).
            inputs: the batch's items, in arrival order.

        Returns:
            The outputs to publish and the failures to record; every input should end up in one or the other.
        """
        if self.max_item_concurrency < 1:
            raise ConfigurationError(f"`max_item_concurrency` must be >= 1, got {self.max_item_concurrency!r}")
        gate = asyncio.Semaphore(self.max_item_concurrency)
        item_ctx = replace(ctx, is_batch=False, batch_size=1)

        async def one(single: EvalInputs) -> EvalResult:
            async with gate:
                try:
                    result = await self.evaluate(item_ctx, single)
                except Exception as exc:  # noqa: BLE001 - engine code: any error is possible; record it against this item
                    log.warning("agent %r: evaluate() raised %s", ctx.agent_name, type(exc).__name__)
                    return EvalResult(failures=(ItemFailure.from_exception(exc, single.artifact_ids),))
                return result.with_lineage(single.artifact_ids)

        return EvalResult.merge(await asyncio.gather(*(one(item) for item in inputs.split())))
