"""One exception family for voxpipe.

Every message names the file (or setting), the field, what was expected and what was found, so a
user can fix the input without reading a traceback. The CLI maps :class:`InputError` (and
:class:`OutputError`, the machine's problems) to exit code 2 and anything else to exit code 1.
"""

from __future__ import annotations


class VoxpipeError(Exception):
    """Base class of every error voxpipe raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class InputError(VoxpipeError):
    """The user's input (a file, a folder, an option, a config value) is wrong. Exit code 2."""

    exit_code = 2


class GeometryError(InputError):
    """Two images that must share a voxel grid do not, or a geometry is invalid."""


class BundleError(InputError):
    """A bundle folder or config is missing something or is malformed."""


class OutputError(InputError):
    """An output cannot be written: a folder where a file should go, a parent that is a file, no
    permission, a full disk. The user's or the machine's problem, not voxpipe's: exit code 2.

    ``errno`` keeps the operating system's error number (``errno.ENOSPC`` for a full disk).
    """

    def __init__(self, message: str, *, hint: str | None = None, errno: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno
