"""The fallback ladder (`ladder`), answer parsing and id alignment (`parsing`), the engine base that runs it
(`engine`), answer planning (`planning`: expected answer lengths and `max_tokens`), and the structured-output
forms each server understands (`formats`).
"""
