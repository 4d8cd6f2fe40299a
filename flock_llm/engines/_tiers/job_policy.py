"""How requests are grouped into provider batch jobs and how long they may wait (`DeferredPolicy`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..._numbers import number
from ...errors import ConfigurationError

__all__ = ["DeferredPolicy"]


@dataclass(frozen=True, slots=True)
class DeferredPolicy:
    """How requests are grouped into provider batch jobs and how long they may wait."""

    job_size: int = 500
    """A job closes when it holds this many requests..."""
    job_wait: float = 30.0
    """...or this many seconds after its first request arrived..."""
    quiet: float = 2.0
    """...or this many seconds after the last one, when no more came (the end of a stream)."""
    poll_interval: float = 5.0
    """The first poll of a job; each next one waits 1.5 times longer, up to `max_poll_interval`."""
    max_poll_interval: float = 120.0
    """The longest wait between two polls of a job."""
    deadline: float = 24 * 3600.0
    """A job not finished this long after this process began polling it is cancelled."""
    cancel_wait: float = 600.0
    """How long a cancelled job is still polled: lines it answers meanwhile are used; the rest go synchronous."""
    keep_finished: float = 3600.0
    """How long a finished job stays in the journal (a process restarted meanwhile reads its answers again instead
    of paying again); older finished jobs are pruned whenever a job finishes."""

    def __post_init__(self) -> None:
        number("job_size", self.job_size, integer=True, fix="the requests per job, e.g. job_size=500")
        if not isinstance(self.job_size, int):  # 2.0 is whole, but a count of requests is an int
            raise ConfigurationError(f"`job_size` must be a whole number > 0, got {self.job_size!r}; e.g. job_size=500")
        names = ("job_wait", "quiet", "poll_interval", "max_poll_interval", "deadline", "cancel_wait", "keep_finished")
        for name in names:
            number(name, getattr(self, name), unit="seconds", fix=f"e.g. DeferredPolicy({name}=30)")
