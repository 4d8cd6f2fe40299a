"""The pure join core: time and count windows, driven with plain numbers."""

from __future__ import annotations

from datetime import timedelta

from domain import PressureSensor, TemperatureSensor

from flock_llm import Artifact
from flock_llm._runtime.correlation import JoinBuffer
from flock_llm.subscription import JoinSpec

TYPES = ("TemperatureSensor", "PressureSensor")


def temp(device: str) -> Artifact:
    return Artifact("TemperatureSensor", TemperatureSensor(device_id=device, celsius=20.0))


def pres(device: str) -> Artifact:
    return Artifact("PressureSensor", PressureSensor(device_id=device, bar=1.0))


def test_pair_completes_in_subscription_type_order() -> None:
    buf = JoinBuffer(JoinSpec(by=lambda x: x.device_id, within=timedelta(seconds=30)), TYPES)
    p, t = pres("d1"), temp("d1")
    first = buf.add(p, "d1", now=0.0)
    assert first.completed is None and first.opened_deadline == 30.0
    second = buf.add(t, "d1", now=5.0)
    assert second.completed == (t, p) and second.opened_deadline is None
    assert buf.open_groups == 0


def test_time_window_expires_incomplete_groups_and_says_what_is_missing() -> None:
    buf = JoinBuffer(JoinSpec(by=lambda x: x.device_id, within=timedelta(seconds=30)), TYPES)
    t = temp("d1")
    buf.add(t, "d1", now=0.0)
    assert buf.take_expired(now=29.9) == []
    (expired,) = buf.take_expired(now=30.0)
    assert expired.artifacts == (t,) and expired.missing == ("PressureSensor",) and expired.reason == "window"
    late = buf.add(pres("d1"), "d1", now=31.0)
    assert late.completed is None  # the late partner opens a new group rather than joining the expired one


def test_count_window_counts_arrivals_at_this_subscription() -> None:
    buf = JoinBuffer(JoinSpec(by=lambda x: x.device_id, within=2), TYPES)
    assert buf.add(temp("a"), "a", now=0.0).completed is None
    assert buf.add(pres("a"), "a", now=0.0).completed is not None  # 2 arrivals: in the window

    buf.add(temp("b"), "b", now=0.0)  # arrival 3 opens b
    buf.add(temp("c"), "c", now=0.0)  # arrival 4: b has seen 2 arrivals, still open
    outcome = buf.add(pres("b"), "b", now=0.0)  # arrival 5: b is past its 2-arrival window
    assert [g.key for g in outcome.expired] == ["b"]
    assert outcome.completed is None


def test_duplicates_of_one_type_wait_for_their_own_partner() -> None:
    buf = JoinBuffer(JoinSpec(by=lambda x: x.device_id, within=timedelta(seconds=30)), TYPES)
    t1, t2, p1, p2 = temp("d"), temp("d"), pres("d"), pres("d")
    buf.add(t1, "d", now=0.0)
    buf.add(t2, "d", now=0.0)
    assert buf.add(p1, "d", now=1.0).completed == (t1, p1)
    assert buf.add(p2, "d", now=1.0).completed == (t2, p2)


def test_take_all_closes_open_groups_for_shutdown() -> None:
    buf = JoinBuffer(JoinSpec(by=lambda x: x.device_id, within=5), TYPES)
    buf.add(temp("x"), "x", now=0.0)
    buf.add(pres("y"), "y", now=0.0)
    closed = buf.take_all()
    assert {g.key for g in closed} == {"x", "y"} and {g.reason for g in closed} == {"shutdown"}
    assert buf.open_groups == 0
