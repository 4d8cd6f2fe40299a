"""How requests go: the standard, flex and batch tiers (`tiers`), provider batch jobs (`jobs`, `job_lines`)
and the in-memory job journal (`journal`).
"""
