"""The pure batching core, driven with plain numbers: no clock, no sleeps."""

from __future__ import annotations

from datetime import timedelta

import pytest
from domain import Transaction

from flock_llm import Artifact, BatchSpecWarning
from flock_llm._runtime.batching import BatchBuffer, BatchEngine
from flock_llm.subscription import BatchSpec


def _item(n: int) -> tuple[Artifact, ...]:
    return (Artifact("Transaction", Transaction(transaction_id=f"t{n}")),)


def test_guide_timeline_size_then_timeout() -> None:
    """size=10, timeout=30 s: 5+3+2 items flush on size at 20 s; 3 items then flush on timeout at 55 s."""
    buf = BatchBuffer(BatchSpec(size=10, timeout=timedelta(seconds=30)))
    n = iter(range(100))
    for _ in range(5):
        assert buf.add(_item(next(n)), now=0.0) is None
    assert buf.deadline == 30.0
    for _ in range(3):
        assert buf.add(_item(next(n)), now=10.0) is None
    assert buf.add(_item(next(n)), now=20.0) is None
    flush = buf.add(_item(next(n)), now=20.0)
    assert flush is not None and flush.reason == "size" and flush.size == 10
    assert flush.waited_s == 20.0 and flush.efficiency == 1.0
    assert buf.deadline is None  # nothing pending, no timer

    for _ in range(3):
        assert buf.add(_item(next(n)), now=25.0) is None
    assert buf.deadline == 55.0  # the timer starts again with the next batch's first item
    assert buf.take_if_due(now=54.9) is None
    flush = buf.take_if_due(now=55.0)
    assert flush is not None and flush.reason == "timeout" and flush.size == 3
    assert flush.efficiency == 0.3 and flush.waited_s == 30.0


def test_deadline_is_from_first_item_not_last() -> None:
    buf = BatchBuffer(BatchSpec(size=100, timeout=timedelta(seconds=30)))
    buf.add(_item(1), now=0.0)
    buf.add(_item(2), now=29.0)
    assert buf.deadline == 30.0


def test_size_only_batch_never_times_out() -> None:
    with pytest.warns(BatchSpecWarning):
        buf = BatchBuffer(BatchSpec(size=3))
    buf.add(_item(1), now=0.0)
    assert buf.deadline is None and buf.take_if_due(now=1e9) is None
    assert buf.take("shutdown", now=1e9) is not None


def test_timeout_only_batch_has_no_efficiency() -> None:
    buf = BatchBuffer(BatchSpec(timeout=timedelta(seconds=1)))
    for i in range(50):
        assert buf.add(_item(i), now=0.5) is None
    flush = buf.take_if_due(now=1.5)
    assert flush is not None and flush.size == 50 and flush.efficiency is None


def test_engine_keeps_batches_per_key_and_reports_new_deadlines() -> None:
    engine = BatchEngine()
    spec = BatchSpec(size=2, timeout=timedelta(seconds=5))
    first = engine.add(("a", 0), spec, _item(1), now=1.0)
    assert first.flush is None and first.opened_deadline == 6.0
    other = engine.add(("b", 0), spec, _item(2), now=2.0)
    assert other.opened_deadline == 7.0
    again = engine.add(("a", 0), spec, _item(3), now=3.0)
    assert again.flush is not None and again.flush.key == ("a", 0) and again.flush.size == 2
    assert set(engine.batches) == {("b", 0)}
    expired = engine.take_expired(now=7.0)
    assert [f.key for f in expired] == [("b", 0)] and expired[0].reason == "timeout"
    assert len(engine) == 0


def test_take_all_empties_everything_with_the_reason() -> None:
    engine = BatchEngine()
    spec = BatchSpec(size=10, timeout=timedelta(seconds=5))
    for key in [("a", 0), ("a", 1), ("b", 0, "cust-1")]:
        engine.add(key, spec, _item(1), now=0.0)
    flushes = engine.take_all("shutdown", now=1.0)
    assert sorted(f.key for f in flushes) == sorted([("a", 0), ("a", 1), ("b", 0, "cust-1")])
    assert {f.reason for f in flushes} == {"shutdown"}
    assert not engine.batches


def test_batch_ids_are_unique_per_batch() -> None:
    buf = BatchBuffer(BatchSpec(size=1, timeout=timedelta(seconds=1)))
    ids = {flush.batch_id for i in range(5) if (flush := buf.add(_item(i), now=0.0)) is not None}
    assert len(ids) == 5


def test_an_item_at_or_after_the_deadline_flushes_the_batch_it_never_belonged_to() -> None:
    """A late timer, or restored items that entered at their old times: the batch re-forms as it first flushed
    (what lets a restarted process ask the same requests, e.g. find its provider batch job again)."""
    engine = BatchEngine()
    spec = BatchSpec(size=10, timeout=timedelta(seconds=30))
    for n, at in enumerate((0.0, 5.0, 29.9)):
        assert engine.add(("a", 0), spec, _item(n), now=at).flushes == ()
    late = engine.add(("a", 0), spec, _item(3), now=30.0)  # the timer has not fired yet
    (flush,) = late.flushes
    assert flush.reason == "timeout" and flush.size == 3 and flush.waited_s == 30.0
    assert late.opened_deadline == 60.0  # the item opened the next batch, with its own timer
    assert [a.payload.transaction_id for a in engine.batches[("a", 0)].artifacts] == ["t3"]
