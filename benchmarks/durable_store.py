"""Durable store benchmark: the core pipeline (publish -> batch(25) -> no-op engine -> publish output,
N=20,000) with the SQLite store vs the in-memory store, interleaved in the same run.

Also: with the SQLite store, the run includes committing every artifact, every delivery and every
consumption mark (3 rows per input), on a writer thread.

Run: python benchmarks/durable_store.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from core_throughput import flock_throughput

from flock_llm.stores.sqlite import SQLiteStore


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    n = parser.parse_args().n
    cases = [
        ("publish() per artifact, ack after commit (default)", 1, "commit"),
        ("publish_many() of 500, ack after commit", 500, "commit"),
        ("publish() per artifact, ack on enqueue", 1, "enqueue"),
    ]
    with tempfile.TemporaryDirectory() as folder:
        for label, chunk, ack in cases:
            ratios, memory, durable = [], [], []
            for i in range(3):
                memory.append(await flock_throughput(n, chunk=chunk))
                store = SQLiteStore(Path(folder) / f"{ack}-{chunk}-{i}.db", ack=ack)  # type: ignore[arg-type]
                durable.append(await flock_throughput(n, chunk=chunk, store=store))
                ratios.append(durable[-1] / memory[-1])
            print(
                f"SQLite vs in-memory, {label}: {statistics.median(ratios):.0%} of in-memory throughput "
                f"(median of 3 pairs; best {max(durable):,.0f} vs {max(memory):,.0f} artifacts/s)"
            )


if __name__ == "__main__":
    asyncio.run(main())
