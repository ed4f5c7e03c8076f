"""Output files that are whole or absent: atomic writes, stale temporaries cleaned up, locks, hashes.

Every writer of voxpipe writes to a temporary file beside its target and renames it (a killed run
leaves no truncated file under a final name); a later run removes the temporaries of runs that died
on this host. Why our own: Python's ``tempfile`` and ``os.replace`` are the parts; none of the
libraries voxpipe builds on writes atomically.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from voxpipe.errors import OutputError

logger = logging.getLogger(__name__)


_UMASK = os.umask(
    0
)  # read once, at import (setting it back at once); reading it later would race with threads
os.umask(_UMASK)


def check_output_folder(folder: str | os.PathLike[str]) -> Path:
    """``folder`` can be an output folder: not a file, and not below one. Checked before a run, so
    that the error names the output path rather than the model after the work is done.

    Raises:
        OutputError: the path or one of its parents is a file (named).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{str(folder)!r}: expected an output folder, found a file at that path")
    blocking = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputError(
            f"{str(folder)!r}: expected an output folder, found that {str(blocking)!r} above it is a file"
        )
    return folder


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (same suffix); rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched, so a crash or
    a kill never leaves a half-written output under the final name. The file gets the usual mode
    (``0666`` less the umask), not the temporary file's ``0600``.
    """
    target = Path(target)
    if target.is_dir():
        raise OutputError(f"{str(target)!r}: expected a file to write, found a folder at that path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocking = next((p for p in target.parents if p.is_file()), None)
        found = f"{str(blocking)!r} is a file" if blocking is not None else (error.strerror or str(error))
        raise OutputError(
            f"{str(target)!r}: could not create its folder {str(target.parent)!r} ({found})",
            errno=error.errno,
        ) from error
    from voxpipe.transforms.io import volume_suffix  # (io writes through this module)

    suffix = volume_suffix(target) or target.suffix
    try:
        # The writer's host and pid in the name let remove_stale_temporaries tell a killed run's leftovers
        # from a live one's, and leave alone those of other machines writing into the same shared folder.
        handle, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.{_host_tag()}-{os.getpid()}-", suffix=f".tmp{suffix}", dir=target.parent
        )
    except OSError as error:
        raise OutputError(
            f"{str(target)!r}: could not write in {str(target.parent)!r} ({error.strerror or error})",
            errno=error.errno,
        ) from error
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
            if tmp.exists():  # mkstemp makes 0600 files; an output gets the mode a plain open() would give it
                os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, target)
        except OSError as error:
            if error.errno is None:
                raise
            raise OutputError(
                f"{str(target)!r}: could not be written ({error.strerror or error})",
                hint="free disk space" if error.errno in (errno.ENOSPC, errno.EDQUOT) else None,
                errno=error.errno,
            ) from error
    finally:
        tmp.unlink(missing_ok=True)


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[A-Za-z0-9_]{8}\.tmp(\..+)?$")


@functools.lru_cache(maxsize=1)
def _host_tag() -> str:
    """8 hex digits naming this machine in temporary file names (a hash: host names may hold dots)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` left in ``folder`` when its process was killed.

    Only voxpipe's own naming (``.<name>.<host>-<pid>-<random>.tmp<suffix>``), only this machine's
    (shards on several machines may share the folder: another host's pid says nothing here), and
    only those whose process is gone; a live process's temporary file is kept. Returns the removed paths.
    """
    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for path in root.iterdir():
        match = _TEMPORARY.match(path.name)
        if not match or not path.is_file() or match.group("host") != _host_tag():
            continue
        if process_alive(int(match.group("pid"))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) a killed run left in %s", len(removed), root)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process of this machine with that pid is running (or not ours to signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file (JSON, CSV, YAML) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if absent) while the block runs: processes
    that merge their parts into one file (shards, folds) take turns. Local disks and NFS with locking."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


__all__ = [
    "atomic_path",
    "check_output_folder",
    "exclusive_lock",
    "process_alive",
    "remove_stale_temporaries",
    "sha256_file",
    "write_text_atomic",
]
