"""Every example runs as a subprocess, offline, and prints what the guide promises."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REDIS_URL, redis_or_skip

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOCK_", "OPENAI_"))}
    env.update(FLOCK_EXAMPLE_TIME_SCALE="0.01", LITELLM_LOCAL_MODEL_COST_MAP="True")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=EXAMPLES.parent,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart_payments_computes_the_fee_savings() -> None:
    out = run_example("quickstart_payments.py")
    assert out.count("batch of 25 (size)") == 2 and "batch of 10 (timeout)" in out
    assert "saved $5.00" in out and "total saved: $10.00 on 60 transactions in 3 batches" in out


def test_sentiment_analysis_uses_one_call_per_100_reviews() -> None:
    out = run_example("sentiment_analysis.py")
    assert out.count("report over 100 reviews") == 3
    assert "300 reviews -> 3 LLM calls (unbatched: 300)" in out and "flock-offline" in out


def test_database_bulk_insert_measures_its_speed_up() -> None:
    out = run_example("database_bulk_insert.py")
    assert "batched: 4 bulk inserts of 500 rows" in out
    speed_up = float(re.search(r"speed-up ([0-9.]+)x", out).group(1))  # type: ignore[union-attr]
    assert speed_up > 1.0


def test_rate_limit_stays_under_the_limit() -> None:
    out = run_example("rate_limit.py")
    assert "200 requests in 2 (scaled) minutes" in out and "under the limit: True" in out
    calls = int(re.search(r"-> (\d+) API calls", out).group(1))  # type: ignore[union-attr]
    assert 20 <= calls <= 30


def test_iot_sensors_report_statistics_per_1000() -> None:
    out = run_example("iot_sensors.py")
    assert out.count("1000 readings from 40 devices (size)") == 2
    assert "500 readings from 40 devices (shutdown)" in out


def test_vip_orders_are_filtered_before_batching() -> None:
    out = run_example("vip_orders.py")
    assert "VIP batch (size) of 10 orders" in out and "VIP batch (shutdown) of 8 orders" in out
    assert "o0" not in out.split("\n")[0].split(": ")[1].split(", ")  # $250 is not VIP
    assert "30 orders published, 18 VIP" in out


def test_join_batch_counts_pairs_and_reports_the_orphan() -> None:
    out = run_example("join_batch_sensors.py")
    assert out.count("QC over 5 devices (10 sensors)") == 2
    assert "join group press-orphan closed incomplete (shutdown), missing PressureSensor" in out


def test_multi_tenant_reports_stay_with_their_tenant() -> None:
    out = run_example("multi_tenant.py")
    assert "acme_dashboard saw reports of: ['acme']" in out
    assert "globex_dashboard saw reports of: ['globex']" in out
    assert "globex: 40 events" in out and "visible to tenant 'globex'" in out


def test_support_tickets_trend_per_20() -> None:
    out = run_example("support_tickets.py")
    assert out.count("trend over 20 tickets") == 2 and "trend over 5 tickets" in out
    assert "45 tickets -> 3 LLM calls" in out


def test_batch_efficiency_shows_reasons_and_efficiency() -> None:
    out = run_example("batch_efficiency.py")
    assert out.count("reason size     efficiency 100%") == 2
    assert "reason timeout" in out and "flushes by reason: {'size': 2, 'timeout':" in out


def test_potion_batch_engine() -> None:
    out = run_example("potion_batch_engine.py")
    assert out.count("Draft: essence of") == 4
    assert "Potion of moonpetal & dragon scale & fog essence (size flush, 3/3): potency 14" in out
    assert "Potion of troll sweat (shutdown flush, 1/3)" in out


def test_distributed_workers_share_batches_and_settle_each_payment_once() -> None:
    redis_or_skip()
    out = run_example("distributed_workers.py", "--redis", REDIS_URL, "--workers", "3", "--payments", "1000")
    assert "1000 payments -> 40 batches ({'size': 40}) settled by 3 worker processes" in out
    assert "every payment settled exactly once: True" in out
    per_worker = [int(n) for n in re.findall(r"\): (\d+) batches", out)]
    assert len(per_worker) == 3 and sum(per_worker) == 40


def test_distributed_workers_say_in_one_line_what_they_need_without_redis() -> None:
    with socket.socket() as s:  # held, not listening: refused, and no other process takes the port meanwhile
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "distributed_workers.py"), "--redis", f"redis://127.0.0.1:{port}/0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"no Redis at redis://127.0.0.1:{port}/0" in line and "--embedded" in line


def test_distributed_workers_embedded_start_and_stop_their_own_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (tests/start_redis.sh installs it)")
    out = run_example("distributed_workers.py", "--embedded", "--workers", "2", "--payments", "200")
    assert "200 payments -> 8 batches" in out and "every payment settled exactly once: True" in out


def _descendants(pid: int) -> set[int]:
    """Live processes below `pid` (from /proc; zombies count as gone)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for kid in children.get(todo.pop(), []):
            found.add(kid)
            todo.append(kid)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_embedded_demo() -> tuple[subprocess.Popen[str], set[int]]:
    """The demo with its own redis-server, 2 workers and a long producer, started as a terminal would start it
    (its own process group); returns once all 4 processes run."""
    if shutil.which("redis-server") is None or not Path("/proc/self/stat").exists():
        pytest.skip("needs redis-server and Linux's /proc")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOCK_", "OPENAI_"))}
    demo = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "distributed_workers.py"), "--embedded", "--workers", "2",
         "--payments", "1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, process_group=0,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    processes: set[int] = set()
    while time.monotonic() < deadline and demo.poll() is None:  # redis-server, 2 workers, then the producer
        seen = _descendants(demo.pid)
        if len(seen) == 4 and seen == processes:  # the same 4 twice: no process counted while it was starting
            return demo, processes
        processes = seen
        time.sleep(0.05)
    os.killpg(demo.pid, signal.SIGKILL)  # leave nothing running for the tests after this one
    _, stderr = demo.communicate(timeout=30)
    raise AssertionError(f"the demo did not start its 4 processes: {sorted(processes)}; stderr: {stderr[-2000:]}")


def _all_gone(pids: set[int], within: float) -> set[int]:
    deadline = time.monotonic() + within
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {p for p in pids if _alive(p)}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_the_embedded_demo_takes_its_redis_and_workers_with_it_when_it_is_killed(signum: int) -> None:
    demo, processes = _start_embedded_demo()
    try:
        demo.send_signal(signum)
        demo.communicate(timeout=60)
        assert not _all_gone(processes, within=40)  # redis-server, the workers and the producer all stopped
    finally:
        for pid in processes:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert demo.returncode == (143 if signum == signal.SIGTERM else -signal.SIGKILL)


def test_ctrl_c_stops_the_embedded_demo_cleanly_with_status_130() -> None:
    demo, processes = _start_embedded_demo()
    try:
        os.killpg(demo.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        _, stderr = demo.communicate(timeout=60)
        assert not _all_gone(processes, within=40)
    finally:
        for pid in processes:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert demo.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")))
def test_every_example_has_a_test(name: str) -> None:
    tested = {
        "quickstart_payments.py",
        "sentiment_analysis.py",
        "database_bulk_insert.py",
        "rate_limit.py",
        "iot_sensors.py",
        "vip_orders.py",
        "join_batch_sensors.py",
        "multi_tenant.py",
        "support_tickets.py",
        "batch_efficiency.py",
        "potion_batch_engine.py",
        "distributed_workers.py",
    }
    assert name in tested
