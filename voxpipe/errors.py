"""One exception family for voxpipe.

Every message names the file (or setting), the field, what was expected and what was found, so a
user can fix the input without reading a traceback. The CLI maps every :class:`UserError` (bad
input, a bad bundle, an output that cannot be written) to exit code 2 and anything else to exit code 1.

The classes say what went wrong, not only which exit code it gets: a bundle that does not load is a
:class:`BundleError`, a full disk an :class:`OutputError`, and neither is a kind of
:class:`InputError` (the user's image or option). Code that handles "anything the user or the machine
can fix" catches :class:`UserError`. :class:`Fields` checks the values read from a file (type, range,
count) and raises the one-line :class:`BundleError` that names the file and the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


class VoxpipeError(Exception):
    """Base class of every error voxpipe raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UserError(VoxpipeError):
    """The user's or the machine's problem, not voxpipe's: exit code 2. Raise one of its subclasses."""

    exit_code = 2


class InputError(UserError):
    """The user's input (a file, a folder, an option, a config value) is wrong. Exit code 2."""


class GeometryError(InputError):
    """Two images that must share a voxel grid do not, or a geometry is invalid."""


class BundleError(UserError):
    """A bundle folder or config is missing something or is malformed."""


class OutputError(UserError):
    """An output cannot be written: a folder where a file should go, a parent that is a file, no
    permission, a full disk. The user's or the machine's problem, not voxpipe's: exit code 2.

    ``errno`` keeps the operating system's error number (``errno.ENOSPC`` for a full disk).
    """

    def __init__(self, message: str, *, hint: str | None = None, errno: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Fields:
    """Type and range checks for the values of one file; each failure names the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(
        self, key: str, expected: str, found: Any, *, hint: str | None = None, shown: bool = True
    ) -> BundleError:
        text = _shown(found) if shown else str(found)
        return BundleError(f"{self.source!r}: {key}: expected {expected}, found {text}", hint=hint)

    def mapping(self, value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, "an object", type(value).__name__, shown=False)
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, "a string", value)
        return value

    def integer(self, value: Any, key: str, *, low: int | None = None, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "an integer" + _range(low, high), value)
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(key, "an integer" + _range(low, high), value)
        return int(value)

    def number(self, value: Any, key: str, *, positive: bool = False, low: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, "a finite number" + (" > 0" if positive else ""), value)
        if (positive and value <= 0) or (low is not None and value < low):
            raise self.fail(key, "a number " + ("> 0" if positive else f">= {low}"), value)
        return float(value)

    def sequence(self, value: Any, key: str, *, count: int | Sequence[int] | None = None) -> list[Any]:
        counts = (count,) if isinstance(count, int) else tuple(count or ())
        expected = "a list" + (
            f" of {' or '.join(map(str, counts))} value{'s' if max(counts) > 1 else ''}" if counts else ""
        )
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise self.fail(key, expected, value)
        if counts and len(value) not in counts:
            raise self.fail(key, expected, value)
        return list(value)

    def integers(
        self, value: Any, key: str, *, count: Any = None, low: int | None = None, high: int | None = None
    ) -> list[int]:
        items = self.sequence(value, key, count=count)
        return [self.integer(v, f"{key}[{i}]", low=low, high=high) for i, v in enumerate(items)]

    def numbers(self, value: Any, key: str, *, count: Any = None, positive: bool = False) -> list[float]:
        items = self.sequence(value, key, count=count)
        return [self.number(v, f"{key}[{i}]", positive=positive) for i, v in enumerate(items)]


def _range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f" in {low}..{high}"
    if low is not None:
        return f" >= {low}"
    return f" <= {high}" if high is not None else ""
