"""The type registry: which pydantic models may live on the blackboard, under which names."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, overload

from pydantic import BaseModel

from .errors import ConfigurationError

__all__ = ["flock_type", "registered_name", "resolve_type", "type_name_of"]

M = TypeVar("M", bound=type[BaseModel])

_by_name: dict[str, type[BaseModel]] = {}
_by_type: dict[type[BaseModel], str] = {}


def _register(cls: type[BaseModel], name: str | None) -> type[BaseModel]:
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        raise ConfigurationError(f"@flock_type decorates pydantic BaseModel classes, got {cls!r}")
    type_name = name or cls.__name__
    if not isinstance(type_name, str) or not type_name:
        raise ConfigurationError(f"`name` must be a non-empty string, got {name!r}")
    existing = _by_name.get(type_name)
    if existing is not None and existing is not cls:
        same_definition = (existing.__module__, existing.__qualname__) == (cls.__module__, cls.__qualname__)
        if not same_definition:
            raise ConfigurationError(
                f"type name {type_name!r} is already registered for {existing.__module__}.{existing.__qualname__}; "
                f"use @flock_type(name=...) to give {cls.__module__}.{cls.__qualname__} a distinct name"
            )
        _by_type.pop(existing, None)  # the same class defined again (e.g. a reloaded module)
    _by_name[type_name] = cls
    _by_type[cls] = type_name
    return cls


@overload
def flock_type(cls: M, /) -> M: ...
@overload
def flock_type(*, name: str | None = None) -> Callable[[M], M]: ...
def flock_type(cls: M | None = None, /, *, name: str | None = None) -> M | Callable[[M], M]:
    """Register a pydantic model so it can be published and consumed.

    Use bare (`@flock_type`) to register under the class name, or
    `@flock_type(name="Transaction")` to choose the name.

    Raises:
        ConfigurationError: the class is not a pydantic model, or the name is taken by another class.
    """
    if cls is not None:
        _register(cls, name)
        return cls

    def decorate(inner: M) -> M:
        _register(inner, name)
        return inner

    return decorate


def type_name_of(cls: type[BaseModel]) -> str:
    """The registered name of `cls`.

    Raises:
        ConfigurationError: `cls` was never registered.
    """
    try:
        return _by_type[cls]
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"{getattr(cls, '__qualname__', cls)!r} is not a registered type; decorate the class with @flock_type"
        ) from None


def registered_name(cls: type[BaseModel]) -> str | None:
    """The registered name of `cls`, or None."""
    return _by_type.get(cls)


def resolve_type(name: str) -> type[BaseModel]:
    """The class registered under `name`.

    Raises:
        ConfigurationError: nothing is registered under `name`.
    """
    try:
        return _by_name[name]
    except KeyError:
        raise ConfigurationError(f"no type is registered under the name {name!r}") from None
