"""Several worker processes share one Redis blackboard and its batches.

Starts N worker processes and one producer process (all this same file), sends payments through them and
checks that each payment was settled exactly once, in batches of 25 filled from every process.

Needs a Redis >= 6.2 (e.g. `apt-get install redis-server`, or `tests/start_redis.sh` for one on port 6390);
`--embedded` starts a private redis-server on a free loopback port instead (and stops it at the end).
Run: python examples/distributed_workers.py [--redis redis://127.0.0.1:6379/0 | --embedded] [--workers 3]
                                             [--payments 1000]

The demo's processes (workers, producer, embedded redis-server) run in sessions of their own and die with it:
SIGTERM, SIGKILL or Ctrl-C of the demo stops them too (on Linux a killed parent is noticed through
PR_SET_PDEATHSIG); Ctrl-C stops the demo with exit status 130, without tracebacks.

In production each role is its own command on its own machine, pointed at the same Redis:
    python examples/distributed_workers.py worker  --redis redis://redis.internal:6379/0 --namespace payments
    python examples/distributed_workers.py produce --redis redis://redis.internal:6379/0 --namespace payments
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

from pydantic import BaseModel

from flock_llm import Flock, StoreUnavailableError, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.stores.redis import RedisStore
from flock_llm.subscription import BatchSpec

INDIVIDUAL_FEE = 0.30
BULK_FEE = 0.10


@flock_type
class Payment(BaseModel):
    payment_id: int
    amount: float


@flock_type
class Settlement(BaseModel):
    batch_id: str
    payment_ids: list[int]
    total: float
    fee: float
    flush_reason: str
    worker: int


class BulkPaymentAPI(Engine):
    """Settles a whole batch in one (simulated, 20 ms) call to a bulk payment API."""

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        payments = inputs.all_as(Payment)
        await asyncio.sleep(0.02)
        fee = BULK_FEE if len(payments) >= 25 else INDIVIDUAL_FEE
        return EvalResult.from_object(
            Settlement(
                batch_id=ctx.batch_id or "",
                payment_ids=[p.payment_id for p in payments],
                total=round(sum(p.amount for p in payments), 2),
                fee=round(fee * len(payments), 2),
                flush_reason=ctx.flush_reason or "",
                worker=os.getpid(),
            )
        )


def child(command: list[str], *, stdout: int | None = None, quiet: bool = False) -> subprocess.Popen[str]:
    """A process of the demo: in a session of its own (a Ctrl-C reaches the demo only, which stops its
    processes in order), and dying with the demo."""
    parent = os.getpid()

    def die_with_parent() -> None:  # in the child, before it runs
        if sys.platform.startswith("linux"):  # SIGTERM when the demo dies, whatever kills it
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the demo died before that took effect
            os._exit(1)

    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL if quiet else stdout,
        stderr=subprocess.DEVNULL if quiet else None,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def blackboard(redis_url: str, namespace: str) -> Flock:
    """The same application in every process: a store URL, and the agents (producers may define none)."""
    return Flock(store=RedisStore(redis_url, namespace=namespace, claim_timeout=10), env={})


async def worker(redis_url: str, namespace: str) -> None:
    flock = blackboard(redis_url, namespace)
    (
        flock.agent("settle")
        .consumes(Payment, batch=BatchSpec(size=25, timeout=timedelta(seconds=2)))
        .publishes(Settlement)
        .with_engines(BulkPaymentAPI())
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with flock:  # start: join the consumer groups; exit: finish the batches taken, leave the rest
        print("ready", flush=True)
        await stop.wait()


async def produce(redis_url: str, namespace: str, count: int) -> None:
    async with blackboard(redis_url, namespace) as flock:
        for start in range(0, count, 100):  # acknowledged once Redis holds them
            await flock.publish_many(
                [Payment(payment_id=i, amount=10.0 + i % 7) for i in range(start, min(start + 100, count))]
            )


async def report(redis_url: str, namespace: str, count: int, workers: list[int]) -> None:
    store = RedisStore(redis_url, namespace=namespace)
    await store.connect()
    deadline = time.monotonic() + 60
    settled: list[Settlement] = []
    while sum(len(s.payment_ids) for s in settled) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        settled = await store.get_by_type(Settlement)
    seen = Counter(i for s in settled for i in s.payment_ids)
    by_worker = Counter(s.worker for s in settled)
    reasons = Counter(s.flush_reason for s in settled)
    fees = sum(s.fee for s in settled)
    print(f"{count} payments -> {len(settled)} batches ({dict(reasons)}) settled by {len(workers)} worker processes")
    for n, pid in enumerate(workers, 1):
        print(f"  worker {n} (pid {pid}): {by_worker[pid]} batches")
    print(f"every payment settled exactly once: {sorted(seen) == list(range(count)) and max(seen.values()) == 1}")
    print(f"fees ${fees:.2f} instead of ${INDIVIDUAL_FEE * count:.2f} one by one")
    await store.aclose()


async def clean_up(redis_url: str, namespace: str) -> None:
    """This demo deletes its namespace's keys once its workers stopped."""
    store = RedisStore(redis_url, namespace=namespace)
    await store.connect()
    keys = [key async for key in store.client.scan_iter(match="{" + namespace + "}:*")]
    if keys:
        await store.client.delete(*keys)
    await store.aclose()


def needs_redis(url: str) -> str:
    """The one line to print when there is no Redis at `url`."""
    return (
        f"distributed_workers: no Redis at {url}: this example needs Redis >= 6.2; start one "
        "(apt-get install redis-server), pass --redis URL, or run with --embedded"
    )


async def reachable(url: str) -> bool:
    store = RedisStore(url, reconnect_timeout=1)
    try:
        await store.connect()
    except StoreUnavailableError:
        return False
    await store.aclose()
    return True


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    """A private redis-server on a free loopback port for the length of the block (nothing written to disk)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("distributed_workers: --embedded needs redis-server installed (apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = child([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], quiet=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not asyncio.run(reachable(url)):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("distributed_workers: the embedded redis-server did not start")
            time.sleep(0.1)
        yield url
    finally:
        stop(server)


def run_all(args: argparse.Namespace) -> None:
    namespace = args.namespace or f"demo-{uuid.uuid4().hex[:8]}"
    me = [sys.executable, __file__, "--redis", args.redis, "--namespace", namespace]
    workers: list[subprocess.Popen[str]] = []
    try:
        workers.extend(child([*me, "worker"], stdout=subprocess.PIPE) for _ in range(args.workers))
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "ready":
                raise SystemExit(f"a worker could not start (is Redis running at {args.redis}?)")
        producer = child([*me, "produce", "--payments", str(args.payments)])
        try:
            if producer.wait() != 0:
                raise SystemExit("distributed_workers: the producer failed")
        finally:
            stop(producer)
        asyncio.run(report(args.redis, namespace, args.payments, [w.pid for w in workers]))
    finally:
        for w in workers:
            stop(w)
        if not args.namespace:
            asyncio.run(clean_up(args.redis, namespace))


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM (a worker finishes the batches it took), then SIGKILL after 30 s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` blocks that stop the demo's processes


def main() -> None:
    try:
        _main()
    except KeyboardInterrupt:
        print("distributed_workers: interrupted; its processes were stopped", file=sys.stderr)
        raise SystemExit(130) from None


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", nargs="?", choices=["worker", "produce"], help="omit to run the whole demo")
    parser.add_argument("--redis", default=os.environ.get("FLOCK_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--namespace", default="")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument("--embedded", action="store_true", help="start a private redis-server for this run")
    args = parser.parse_args()
    if args.role is None:
        signal.signal(signal.SIGTERM, _terminated)
    if args.embedded and args.role is None:
        with embedded_redis() as url:
            args.redis = url
            run_all(args)
        return
    if not asyncio.run(reachable(args.redis)):
        print(needs_redis(args.redis), file=sys.stderr)
        raise SystemExit(2)
    if args.role == "worker":
        asyncio.run(worker(args.redis, args.namespace or "payments"))
    elif args.role == "produce":
        asyncio.run(produce(args.redis, args.namespace or "payments", args.payments))
    else:
        run_all(args)


if __name__ == "__main__":
    main()
