"""What one model call passes through: the call shell (`shell`), retries (`retry`), the circuit breaker
(`breaker`), budgets and per-minute limits (`spend`), prices (`prices`), rate windows (`rate`), the call record
and usage counters (`record`), and model resolution (`models`).
"""
