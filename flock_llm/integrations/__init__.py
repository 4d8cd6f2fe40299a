"""Adapters that run flock_llm engines inside other frameworks (imported only on request)."""
