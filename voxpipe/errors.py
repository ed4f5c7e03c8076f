"""One exception family for voxpipe.

Every message names the file (or setting), the field, what was expected and what was found, so a
user can fix the input without reading a traceback. The CLI maps every :class:`UserError` (bad
input, a bad bundle, an output that cannot be written) to exit code 2 and anything else to exit code 1.

The classes say what went wrong, not only which exit code it gets: a bundle that does not load is a
:class:`BundleError`, a full disk an :class:`OutputError`, and neither is a kind of
:class:`InputError` (the user's image or option). Code that handles "anything the user or the machine
can fix" catches :class:`UserError`.
"""

from __future__ import annotations


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
