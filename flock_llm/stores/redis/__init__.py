"""A blackboard shared by many processes, in Redis Streams.

    Flock(store="redis://127.0.0.1:6379/0")                  # every worker process, same agents
    Flock(store="redis://host:6379/0?namespace=reviews&claim_timeout=30")

Published artifacts go to one stream per type; each (agent, subscription) reads them through its own
consumer group, so every item reaches exactly one worker process at a time. Batches accumulate in
Redis, shared by all processes, and the Lua scripts in `scripts` decide flushes atomically on
the server. Flushed batches wait in a ready stream per (agent, subscription) until a worker with a
free slot takes them; a worker that dies mid-run loses its claim after `claim_timeout` and another
worker runs the batch again. A run's outputs are published in the same script that acknowledges its
batch, so a batch run twice publishes once.

Requires redis-py (`pip install 'flock_llm[redis]'`) and Redis >= 6.2. With `appendonly yes` and
`appendfsync always`, whatever `publish()` acknowledged survives a crash of Redis itself.

The package, along its seams:
    store        RedisStore: writing units and publishes, reading by type and by id
    connection   settings, key layout, the client with reconnecting retries, writes in flight
    scripts      the Lua scripts that make shared batches, sets, commits and rate windows atomic
    intake       RedisWorker: one process's part (intake and ready loops, housekeeping)
    entries      stream entries decoded, checked again, turned into flushes
    flushes      deadline timers and flushes of shared batches
    sets         AND gates and joins
    peers        which live workers define which agents how (mid-deploy handover)
    retention    forgetting what every consumer group is done with
    rate         rate windows and the batch-job journal shared by every worker
    support      small pure helpers (URL redaction, ids, entry parsing)
"""

from __future__ import annotations

from .store import RedisStore
from .support import redact_url

__all__ = ["RedisStore", "redact_url"]
