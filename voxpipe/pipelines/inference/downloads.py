"""One file of a catalogue model, fetched so that a cut-short, replaced or hostile transfer is never kept.

A transfer is complete only when the bytes received equal what the server declared
(``Content-Length``, and ``Content-Range``'s total on a resume); anything short stays ``.part`` and the
next pull resumes it. A resume is appended only when the server answers ``206`` starting at the
``.part``'s size; a ``200``, or a ``206`` that starts elsewhere, starts over. A ``416`` means "already
complete" only when its ``Content-Range: bytes */N`` equals the ``.part``'s size. Each file has one
overall deadline (a server that trickles a byte a minute is given up on, saying so). A file that fails
a check (short, not a zip, bytes before the zip, a hash that differs) is moved aside to
``<name>.bad`` and named, so the next pull starts clean.

The cache's ``hashes.json`` holds the SHA-256 of each publisher file seen first (trust on first use,
where the publisher gives no hash). It is written atomically, read under the cache's lock (one pull at
a time per cache), and a corrupt one is named with its fix. Bytes from a ``--mirror`` are checked
against it but never recorded in it.

Why our own: ``urllib`` and MONAI's ``download_url`` neither resume nor check a resume's range, and
neither has an overall deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from voxpipe.errors import InputError

logger = logging.getLogger(__name__)

DEADLINE_S = 3600.0  # one file's whole transfer; `voxpipe models pull --deadline` changes it
_READ_TIMEOUT_S = 60.0  # one read of the socket
_CHUNK = 1 << 20
HASHES = "hashes.json"


class _Restart(Exception):
    """The server ignored or misplaced the resume: the ``.part`` is discarded and the file fetched whole."""


def file_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def digest(path: Path, kind: str) -> str:
    hasher = hashlib.new(kind)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(_CHUNK), b""):
            hasher.update(block)
    return hasher.hexdigest()


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """One pull at a time per cache (``<cache>/.lock``): a second pull waits, saying so."""
    import fcntl

    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("%s: another pull is using this cache; waiting for it to finish", cache)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json_record(path: Path, *, what: str) -> dict:
    """A JSON object voxpipe wrote (``hashes.json``, ``voxpipe-model.json``); a damaged one is named.

    Raises:
        InputError: not JSON, or not an object of the expected shape.
    """
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        found = f"invalid JSON ({error})"
    else:
        if isinstance(document, dict):
            return document
        found = type(document).__name__
    raise InputError(
        f"{str(path)!r}: expected {what} (a JSON object), found {found}",
        hint=f"remove {path.name} and pull again; voxpipe writes it anew",
    )


def read_hashes(cache: Path) -> dict[str, str]:
    """The cache's ``hashes.json`` ({file name: SHA-256}); a corrupt one raises naming it."""
    path = cache / HASHES
    recorded = read_json_record(path, what="the SHA-256 recorded for each downloaded file")
    bad = [k for k, v in recorded.items() if not (isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v))]
    if bad:
        raise InputError(
            f"{str(path)!r}: expected a 64-digit SHA-256 for each file, found {recorded[bad[0]]!r} for {bad[0]!r}",
            hint=f"remove {path.name} and pull again; voxpipe writes it anew",
        )
    return recorded


def record_hash(cache: Path, name: str, sha256: str) -> None:
    """Add one file's SHA-256 to ``hashes.json`` (atomically, re-read first: call under :func:`cache_lock`)."""
    from voxpipe.transforms.files import write_text_atomic

    recorded = read_hashes(cache)
    recorded[name] = sha256
    write_text_atomic(cache / HASHES, json.dumps(recorded, indent=2, sort_keys=True) + "\n")


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes S-E/T`` → (S, E, T); ``bytes */T`` → (None, None, T); anything else → Nones."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total != "*" else None,
    )


def _open(url: str, have: int, deadline: float) -> tuple[object | None, int, int | None]:
    """The response for ``url`` from byte ``have``: (response or None when the part is complete,
    the offset the response starts at, the file's declared total size or None)."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    timeout = max(1.0, min(_READ_TIMEOUT_S, deadline - time.monotonic()))
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (the catalogue's https URLs, or a mirror the user names)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            _, _, total = _content_range(error.headers.get("Content-Range"))
            if total == have:  # the part already holds the whole file
                return None, have, total
            raise _Restart(
                f"416 with {error.headers.get('Content-Range')!r} for a {have}-byte part"
            ) from None
        raise
    length = response.headers.get("Content-Length")
    if response.status == 206:
        start, _, total = _content_range(response.headers.get("Content-Range"))
        if start != have:
            response.close()
            raise _Restart(f"206 starting at {start} for a {have}-byte part")
        if total is None and length is not None:
            total = have + int(length)
        return response, have, total
    return response, 0, int(length) if length is not None and length.isdigit() else None


def _transfer(url: str, part: Path, deadline: float, deadline_s: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    try:
        response, start, total = _open(url, have, deadline)
    except _Restart as why:
        logger.warning("%s: resume refused (%s); fetching the whole file", url, why)
        part.unlink(missing_ok=True)
        response, start, total = _open(url, 0, deadline)
    if response is None:
        return
    with response, part.open("r+b" if start else "wb") as stream:  # type: ignore[attr-defined]
        stream.seek(start)
        stream.truncate()
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"not complete after {deadline_s:.0f} s (the deadline for one file; "
                    "voxpipe models pull --deadline SECONDS changes it)"
                )
            block = response.read1(_CHUNK)  # type: ignore[attr-defined]
            if not block:
                break
            stream.write(block)
    size = part.stat().st_size
    if total is not None and size > total:  # more than the file: the part is corrupt, start over next time
        part.unlink()
        raise ConnectionError(f"the server declared {total:,} bytes and sent more; the part was removed")
    if total is not None and size != total:
        raise ConnectionError(
            f"the server declared {total:,} bytes and sent {size - start:,} of {total - start:,}"
        )


def fetch(url: str, part: Path, *, deadline_s: float = DEADLINE_S) -> None:
    """Download ``url`` into ``part`` (resuming it where the server allows) until it holds the whole
    file as the server declared it.

    Raises:
        InputError: the transfer failed, was cut short or ran past the deadline; the ``.part`` is kept
        for the next pull to resume.
    """
    deadline = time.monotonic() + deadline_s
    try:
        _transfer(url, part, deadline, deadline_s)
    except (urllib.error.URLError, OSError, ValueError, _Restart) as error:
        kept = part.stat().st_size if part.exists() else 0
        raise InputError(
            f"{url}: download failed ({getattr(error, 'reason', None) or error}); {kept:,} bytes kept in {str(part)!r}",
            hint="run the command again to resume, or fetch the file by hand and put it where the error names",
        ) from None


def check_zip(path: Path) -> str | None:
    """Why ``path`` is not a plain zip archive (None when it is): HTML, a truncated file, bytes before it."""
    try:
        with zipfile.ZipFile(path) as zipped:
            members = zipped.infolist()
            if not members:
                return "an empty zip archive"
            first = min(member.header_offset for member in members)
            if first != 0:
                return f"{first:,} bytes before the zip archive (a resume appended to a whole file?)"
    except zipfile.BadZipFile as error:
        with path.open("rb") as stream:
            head = stream.read(64).lstrip().lower()
        what = "an HTML page" if head.startswith((b"<!doctype html", b"<html")) else f"not a zip ({error})"
        return what
    return None


def move_aside(path: Path, why: str, *, source: str) -> InputError:
    """Move a file that failed a check to ``<name>.bad``; the error naming both and the reason."""
    bad = path.with_name(path.name + ".bad")
    path.replace(bad)
    return InputError(
        f"{str(path)!r}: {why}; moved to {bad.name} so the next pull starts clean",
        hint=f"run the command again to download {source} anew; if this repeats, the server sends a different file",
    )


__all__ = [
    "DEADLINE_S",
    "cache_lock",
    "check_zip",
    "digest",
    "fetch",
    "file_name",
    "move_aside",
    "read_hashes",
    "read_json_record",
    "record_hash",
]
