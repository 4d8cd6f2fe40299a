"""Outputs and failure records: the one place that builds what an agent publishes.

`output_artifact` and `failure_artifact` are pure (type checks, lineage, visibility inheritance: an output
or failure record is as visible as the inputs it names, never public by accident). `Outcomes` publishes them
for every path: engine results, engine errors, user code that raised (`where`, `by=`, join keys), refused
shared batch items, undecodable entries, cancelled runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from pydantic import BaseModel

from .._vocabulary import CounterName, FailureStage
from ..agent import Agent
from ..artifact import Artifact, FailureRecord, new_artifact_id
from ..errors import EngineError
from ..metrics import MetricsRecorder
from ..registry import type_name_of
from ..subscription import Subscription
from ..visibility import Visibility, combine_visibilities

if TYPE_CHECKING:
    from ..engines import EvalInputs, EvalResult
    from ..tracing import Tracer
    from .batching import Flush

__all__ = ["FailureStage", "Outcomes", "correlation_of", "failure_artifact", "output_artifact", "oversized_output"]

log = logging.getLogger("flock_llm")


def correlation_of(inputs: list[Artifact]) -> str:
    """The correlation id of what `inputs` produce: theirs when they all share one; otherwise a fresh one.

    A batch usually mixes many correlations; giving its report the first input's id would claim it belongs to
    that one conversation. A fresh id keeps the output traceable as a unit, and `derived_from` still links it
    to every input (and so to every correlation it covers).
    """
    ids = {a.correlation_id for a in inputs}
    if len(ids) == 1:
        (shared,) = ids
        if shared is not None:
            return shared
    return new_artifact_id()


def output_artifact(agent: Agent, obj: BaseModel, derived_from: tuple[str, ...], sources: list[Artifact]) -> Artifact:
    """The artifact for one engine output.

    Raises:
        EngineError: the object is not of a type the agent publishes.
        ConfigurationError: the agent's visibility template cannot resolve the object (and whatever a
            user `tenant_id_extractor` raises).
    """
    if not isinstance(obj, BaseModel) or type(obj) not in agent.output_types:
        declared = ", ".join(t.__name__ for t in agent.output_types) or "nothing"
        raise EngineError(
            f"the engine returned a {type(obj).__name__}, but agent {agent.name!r} publishes {declared}; "
            "declare it with `.publishes(...)`"
        )
    if agent.output_visibility is not None:
        visibility = agent.output_visibility.resolve(obj)
    else:
        visibility = combine_visibilities(a.visibility for a in sources)
    return Artifact(
        type_name=type_name_of(type(obj)),
        payload=obj,
        produced_by=agent.name,
        derived_from=derived_from,
        correlation_id=correlation_of(sources),
        visibility=visibility,
    )


def failure_artifact(
    agent: Agent, inputs: list[Artifact], record: FailureRecord, *, visibility: Visibility | None = None
) -> Artifact:
    """The artifact for a failure record: derived from, and as visible as, the inputs it names (or as
    `visibility`, for inputs known only by id and visibility, such as entries that no longer decode)."""
    return Artifact(
        type_name=type_name_of(FailureRecord),
        payload=record,
        produced_by=agent.name,
        derived_from=tuple(record.input_ids),
        correlation_id=correlation_of(inputs),
        visibility=combine_visibilities(a.visibility for a in inputs) if visibility is None else visibility,
    )


def oversized_output(output: Artifact, size: int, limit: int) -> Artifact:
    """A failure record to publish in place of an output over a store's size limit: derived from, and as
    visible as, the output, so its inputs stay accounted for and private."""
    record = FailureRecord(
        agent=output.produced_by or "",
        input_ids=list(output.derived_from),
        stage="output",
        error_type="ArtifactTooLarge",
        error=f"a {output.type_name} of {size:,} bytes is over the store's max_artifact_bytes ({limit:,})",
    )
    return replace(output, type_name=type_name_of(FailureRecord), payload=record)


class Outcomes:
    """Publishes outputs and failure records through `publish` (the runtime's: store, then route)."""

    def __init__(self, publish: Callable[[Artifact], None], metrics: MetricsRecorder, tracer: Tracer | None) -> None:
        self._publish = publish
        self._metrics = metrics
        self._tracer = tracer
        self._collected: list[Artifact] | None = None

    def collect(self) -> list[Artifact]:
        """From now until `collected()`, also keep what is published (the artifacts of one finished run)."""
        self._collected = []
        return self._collected

    def collected(self) -> list[Artifact]:
        found, self._collected = self._collected or [], None
        return found

    def _emit(self, artifact: Artifact) -> None:
        if self._collected is not None:
            self._collected.append(artifact)
        self._publish(artifact)

    def result(self, agent: Agent, inputs: EvalInputs, result: EvalResult, flush: Flush | None) -> None:
        """An engine's result: its outputs (with lineage), and failure records for what it could not do."""
        by_id = {a.id: a for a in inputs.artifacts}
        for output in result.with_lineage(list(by_id)).outputs:
            sources = [by_id[i] for i in output.derived_from or () if i in by_id] or list(by_id.values())
            try:
                artifact = output_artifact(agent, output.obj, output.derived_from or (), sources)
            except Exception as exc:  # noqa: BLE001 - user code (visibility extractors) or a wrong output type
                self._metrics.counters.rejected_outputs += 1
                self.failure(agent, sources, exc, stage="output", flush=flush)
                continue
            self._emit(artifact)
        for failure in result.failures:
            failed = [by_id[i] for i in failure.artifact_ids if i in by_id] or list(by_id.values())
            self.failure_record(
                agent,
                failed,
                FailureRecord(
                    agent=agent.name,
                    input_ids=[a.id for a in failed],
                    stage=failure.stage,
                    error_type=failure.error_type,
                    error=failure.error,
                    flush_reason=None if flush is None else flush.reason,
                    batch_id=None if flush is None else flush.batch_id,
                ),
            )

    def failure(
        self,
        agent: Agent,
        inputs: list[Artifact],
        exc: BaseException,
        *,
        stage: FailureStage,
        flush: Flush | None = None,
    ) -> None:
        """A failure record for `inputs` from an exception (its text never quotes payload values)."""
        record = FailureRecord.from_exception(
            exc,
            agent=agent.name,
            input_ids=[a.id for a in inputs],
            stage=stage,
            flush_reason=None if flush is None else flush.reason,
            batch_id=None if flush is None else flush.batch_id,
        )
        self.failure_record(agent, inputs, record)

    def failure_record(
        self, agent: Agent, inputs: list[Artifact], record: FailureRecord, *, visibility: Visibility | None = None
    ) -> None:
        """Publish a failure record, as visible as its inputs (or as `visibility`, when they could not be read)."""
        self._metrics.counters.failure_records += 1
        self._emit(failure_artifact(agent, inputs, record, visibility=visibility))

    def user_code_failed(
        self,
        agent: Agent,
        sub: Subscription,
        artifact: Artifact,
        exc: Exception,
        *,
        stage: FailureStage,
        counter: CounterName,
    ) -> None:
        """User code (`where`, `by=`, a join key) raised on an artifact: count, log, trace, record."""
        self._metrics.counters.add(counter)
        log.warning(
            "agent %r subscription %d: `%s` raised %s on artifact %s; the artifact was not consumed (failure recorded)",
            agent.name,
            sub.index,
            stage,
            type(exc).__name__,
            artifact.id,
        )
        if self._tracer is not None:
            span = self._tracer.start(
                "flock.user_code.error",
                agent=agent.name,
                subscription=sub.index,
                stage=stage,
                artifact_id=artifact.id,
                error_type=type(exc).__name__,
            )
            span.fail(exc)
            span.end()
        self.failure(agent, [artifact], exc, stage=stage)
