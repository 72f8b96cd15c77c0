"""The dataset errors, apart so that every dataset module can raise them without importing another."""

from __future__ import annotations


class DatasetError(ValueError):
    """The dataset on disk does not match its format; the message names the file and the fix."""


def short_error(exc: BaseException) -> str:
    """'TypeName: first line of the message', at most 160 characters, for one-line error reports."""
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}"[:160]
