"""Kept for one release: the SQLite store now lives in `flock_llm.stores.sqlite` (import it from `flock_llm.stores`)."""

from .stores.sqlite import PendingDelivery, Recovered, SQLiteStore

__all__ = ["PendingDelivery", "Recovered", "SQLiteStore"]
