"""Exceptions raised by gdsu-fork.

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
