"""Examples keep the guide's timeouts but scale them down so each script runs in seconds.

FLOCK_EXAMPLE_TIME_SCALE=1 runs them in real time; the default 0.01 turns 30 s into 0.3 s.
"""

from __future__ import annotations

import os
from datetime import timedelta

SCALE = float(os.environ.get("FLOCK_EXAMPLE_TIME_SCALE", "0.01"))


def scaled(duration: timedelta) -> timedelta:
    return duration * SCALE
