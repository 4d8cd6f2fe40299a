"""Rate-limit management: 100 requests/minute arrive; batching 10 per call sends 10 calls/minute.

The API allows 100 calls per minute. Timeouts are scaled (FLOCK_EXAMPLE_TIME_SCALE), and so is "a minute".
Run: python examples/rate_limit.py
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from _timescale import scaled
from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult
from flock_llm.subscription import BatchSpec

API_LIMIT_PER_MINUTE = 100
ARRIVALS_PER_MINUTE = 100
MINUTES = 2


@flock_type
class APIRequest(BaseModel):
    request_id: int
    endpoint: str


@flock_type
class APIResponse(BaseModel):
    request_ids: list[int]
    status: int


class BulkAPIEngine(Engine):
    """Sends each batch as ONE call to the (simulated) bulk endpoint and records when."""

    def __init__(self) -> None:
        self.call_times: list[float] = []

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        self.call_times.append(asyncio.get_running_loop().time())
        return EvalResult.from_object(
            APIResponse(request_ids=[r.request_id for r in inputs.all_as(APIRequest)], status=200)
        )


def max_calls_in_a_minute(times: list[float], minute: float) -> int:
    return max((sum(1 for t in times if start <= t < start + minute) for start in times), default=0)


async def main() -> None:
    minute = scaled(timedelta(minutes=1)).total_seconds()
    engine = BulkAPIEngine()
    async with Flock() as flock:
        (
            flock.agent("api_client")
            .consumes(
                APIRequest,
                batch=BatchSpec(
                    size=10,  # 10 items per API call
                    timeout=scaled(timedelta(seconds=6)),  # 6 sec x 10 batches = 60 sec
                ),
            )
            .publishes(APIResponse)
            .with_engines(engine)
        )
        for i in range(ARRIVALS_PER_MINUTE * MINUTES):
            await flock.publish(APIRequest(request_id=i, endpoint="/v1/enrich"))
            await asyncio.sleep(minute / ARRIVALS_PER_MINUTE)
        await flock.run_until_idle()
    responses = await flock.store.get_by_type(APIResponse)
    answered = sum(len(r.request_ids) for r in responses)
    peak = max_calls_in_a_minute(engine.call_times, minute)
    print(f"{answered} requests in {MINUTES} (scaled) minutes -> {len(engine.call_times)} API calls")
    print(
        f"peak calls in any minute: {peak} (limit {API_LIMIT_PER_MINUTE}; unbatched would need "
        f"{ARRIVALS_PER_MINUTE}); under the limit: {peak <= API_LIMIT_PER_MINUTE}"
    )


if __name__ == "__main__":
    asyncio.run(main())
