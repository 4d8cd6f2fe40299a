"""The runtime behind the Flock facade: pure cores (batching, correlation, timers), the router (who may
receive an artifact), outcomes (what a run publishes), the ledger (durable write units), and the ports a
store or a shared intake implements. Nothing here is public API."""
