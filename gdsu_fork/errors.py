"""Exceptions raised by gdsu-fork, and how messages show the objects they are about.

Every error derives from `GdsuError`; each also subclasses the builtin that fits it, so callers
can catch either.
"""


class GdsuError(Exception):
    """Base class of every error gdsu-fork raises."""


class PatchError(GdsuError, ValueError):
    """The patch is malformed: a bad name, a missing file, a declaration the engine cannot honour."""


class UpdateRefused(GdsuError, RuntimeError):
    """The new environment cannot be committed safely; nothing was changed."""


class SafePointTimeout(GdsuError, TimeoutError):
    """No safe point was reached before the deadline."""


def short_repr(obj: object, limit: int = 100) -> str:
    """`repr(obj)` cut to `limit` characters, never raising (a message must not fail)."""
    try:
        text = repr(obj)
    except Exception:
        text = object.__repr__(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."
