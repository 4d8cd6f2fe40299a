"""Error text that is safe to keep in failure records: it says what went wrong, never the payload. Pure.

pydantic's `str(ValidationError)` quotes each offending value (`input_value='...'`): for a private
artifact that is the secret itself. Failure records are built from `describe_error`, which renders
validation errors by location and message only, and caps the length.
"""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["describe_error"]

_MAX = 1000


def describe_error(exc: BaseException) -> str:
    """A one-paragraph description of `exc` without the values it was raised about."""
    validation = _validation_error(exc)
    if validation is not None:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}"
            for error in validation.errors(include_url=False, include_input=False)[:10]
        ]
        more = validation.error_count() - len(problems)
        text = f"{validation.error_count()} validation error(s) for {validation.title}: " + "; ".join(problems)
        if more > 0:
            text += f"; and {more} more"
        return text[:_MAX]
    return str(exc)[:_MAX]


def _validation_error(exc: BaseException) -> ValidationError | None:
    """`exc` itself, or the ValidationError it was raised from (wrappers keep pydantic's text as theirs)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ValidationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
