"""The public surface is explicit, light to import, and rejects bad input clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest
from domain import Echo
from pydantic import BaseModel

import flock_llm
from flock_llm import ConfigurationError, Flock, flock_type
from flock_llm.registry import resolve_type, type_name_of


def test_top_level_exports() -> None:
    assert set(flock_llm.__all__) == {
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
    }


def test_documented_imports_work() -> None:
    from flock_llm.engines import Engine, EvalInputs, EvalResult  # noqa: F401
    from flock_llm.engines.examples import BatchItem, BatchSummary, SimpleBatchEngine  # noqa: F401
    from flock_llm.subscription import BatchSpec, JoinSpec  # noqa: F401
    from flock_llm.visibility import (  # noqa: F401
        LabelledVisibility,
        PrivateVisibility,
        PublicVisibility,
        TenantVisibility,
    )


def test_import_is_light_and_has_no_side_effects() -> None:
    code = (
        "import sys, flock_llm, flock_llm.engines, flock_llm.engines.examples, flock_llm.testing;"
        "heavy = {'litellm', 'dspy', 'openai', 'duckdb'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_flock_type_bare_and_named_forms() -> None:
    @flock_type(name="PublicApiNamed")
    class Named(BaseModel):
        x: int

    assert type_name_of(Named) == "PublicApiNamed" and resolve_type("PublicApiNamed") is Named
    assert type_name_of(Echo) == "Echo"


def test_a_name_taken_by_another_class_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"'Echo' is already registered.*use @flock_type\(name=\.\.\.\)"):

        @flock_type
        class Echo(BaseModel):  # noqa: F811 - a second class under a taken name
            other: int


def test_flock_type_rejects_non_models() -> None:
    with pytest.raises(ConfigurationError, match="decorates pydantic BaseModel classes"):
        flock_type(dict)  # type: ignore[type-var]


async def test_unregistered_types_are_clear_errors() -> None:
    class Stray(BaseModel):
        x: int

    flock = Flock(env={})
    with pytest.raises(ConfigurationError, match="not a registered type; decorate the class with @flock_type"):
        flock.agent("a").consumes(Stray)
    with pytest.raises(ConfigurationError, match="not a registered type"):
        await flock.publish(Stray(x=1))
    with pytest.raises(ConfigurationError, match="takes a @flock_type pydantic object"):
        await flock.publish({"x": 1})  # type: ignore[arg-type]


def test_builder_rejects_bad_configuration() -> None:
    from datetime import timedelta

    from flock_llm.subscription import BatchSpec, JoinSpec

    flock = Flock(env={})
    agent = flock.agent("a")
    with pytest.raises(ConfigurationError, match="already exists"):
        flock.agent("a")
    with pytest.raises(ConfigurationError, match="at least one type"):
        agent.consumes()
    with pytest.raises(ConfigurationError, match="a join correlates two or more artifacts"):
        agent.consumes(Echo, join=JoinSpec(by=lambda e: e.source, within=3))
    with pytest.raises(ConfigurationError, match="`batch` must be a BatchSpec"):
        agent.consumes(Echo, batch={"size": 3})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="`where` must be a callable"):
        agent.consumes(Echo, where=[True])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="exactly one engine"):
        agent.with_engines()
    with pytest.raises(ConfigurationError, match="`max_concurrency` must be a positive integer"):
        agent.max_concurrency(0)
    with pytest.raises(ConfigurationError, match="`model` must be a litellm model string"):
        Flock(model="")
    assert agent.consumes(Echo, batch=BatchSpec(size=2, timeout=timedelta(seconds=1))) is agent


def test_the_stores_live_in_flock_llm_stores_and_public_types_report_public_modules() -> None:
    import importlib.util

    import flock_llm.stores as stores
    from flock_llm.subscription import BatchSpec, JoinSpec

    # the one-release re-export modules were never released: they are gone
    assert all(importlib.util.find_spec(f"flock_llm.{old}") is None for old in ("store", "sqlite_store", "redis_store"))
    assert flock_llm.BatchSpec is BatchSpec and flock_llm.JoinSpec is JoinSpec  # also at the top level
    assert isinstance(stores.store_from_url("redis://127.0.0.1:1/0"), stores.RedisStore)
