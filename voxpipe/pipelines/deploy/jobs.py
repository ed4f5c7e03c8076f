"""The node's work folder: received instances and the job queue, both on disk, so a kill loses nothing.

Why our own: pynetdicom receives instances but keeps nothing; MONAI Deploy's Informatics Gateway
(which does) is a separate .NET service. What a node next to a PACS needs is small: every instance
is on disk (fsynced) before its C-STORE is acknowledged, one JSON record per series says where its
job stands, and a restart picks up from those files alone.

Layout of ``WORKDIR``::

    incoming/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   as received (DICOM file with its meta header)
    jobs/<SeriesInstanceUID>.json                       the job record (state, times, reason, results, sent)
    results/<SeriesInstanceUID>/                        label map, DICOM-SEG, SR, statistics
    node.log                                            what the node did (UIDs and AE titles, never patient data)

A job goes ``receiving`` → ``queued`` (no instance for ``idle`` seconds) → ``running`` → ``sending``
→ ``done``, or ends ``failed`` with its reason. Result objects get SOP Instance UIDs derived from the
series UID and the job's revision, so a job that is rerun after a kill produces the same instances and
a PACS that stored them once stores them once (DICOM storage is idempotent by SOP Instance UID);
``sent`` lists the instances the destination acknowledged, which are never sent again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from voxpipe.errors import InputError

logger = logging.getLogger(__name__)

STATES = ("receiving", "queued", "running", "sending", "done", "failed")
# A UID is digits and dots, at most 64 characters (PS3.5 9.1); anything else never becomes a path.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_ATTEMPTS = (
    3  # runs a job may start; a job that stopped the node this often is failed, not retried forever
)


def is_uid(value: object) -> bool:
    """Whether ``value`` is a syntactically valid DICOM UID (safe to use as a file name)."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID.match(value))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def durable_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it survives a kill or power loss once this returns.

    A temporary file in the same folder is written, flushed and fsynced, renamed onto ``path`` and
    the folder fsynced: either the whole file is there under its name, or nothing is.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _new_job(
    series_uid: str, *, study_uid: str, modality: str, calling_aet: str, received: str
) -> dict[str, Any]:
    return {
        "series_uid": series_uid,
        "study_uid": study_uid,
        "modality": modality,
        "calling_aet": calling_aet,
        "state": "receiving",
        "first_received": received,
        "last_received": received,
        "revision": 0,
        "attempts": 0,
        "reason": None,
        "results": {},
        "sent": [],
        "history": [[_now(), "receiving"]],
    }


class JobStore:
    """Received instances and job records under ``workdir`` (thread-safe; one node per folder).

    Raises:
        InputError: ``workdir`` cannot be created or written (or, with ``create=False``, is not a
            node's work folder).
    """

    def __init__(self, workdir: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(workdir)
        if not create and not (self.root / "jobs").is_dir():
            raise InputError(
                f"{str(self.root)!r}: expected a node work folder (with jobs/), found "
                f"{'a folder without one' if self.root.is_dir() else 'nothing at that path'}"
            )
        try:
            for name in ("incoming", "jobs", "results"):
                (self.root / name).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(
                f"{str(self.root)!r}: could not create the node's work folder ({error.strerror or error})"
            ) from error
        self._lock = threading.RLock()
        self._last_received: dict[str, float] = {}

    # -- paths ------------------------------------------------------------------------------------
    def series_dir(self, series_uid: str) -> Path:
        return self.root / "incoming" / series_uid

    def results_dir(self, series_uid: str) -> Path:
        return self.root / "results" / series_uid

    def _record_path(self, series_uid: str) -> Path:
        return self.root / "jobs" / f"{series_uid}.json"

    # -- records ----------------------------------------------------------------------------------
    def get(self, series_uid: str) -> dict[str, Any] | None:
        path = self._record_path(series_uid)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise InputError(
                f"{str(path)!r}: expected a job record (JSON), found an unreadable file ({error})"
            ) from error

    def save(self, job: dict[str, Any]) -> None:
        with self._lock:
            job["updated"] = _now()
            durable_write(self._record_path(job["series_uid"]), (json.dumps(job, indent=2) + "\n").encode())

    def update(self, series_uid: str, **changes: Any) -> dict[str, Any]:
        """Apply ``changes`` to a job record and save it; a change of ``state`` is logged and kept in ``history``."""
        with self._lock:
            job = self.get(series_uid)
            if job is None:
                raise KeyError(series_uid)
            state = changes.get("state")
            if state is not None and state != job["state"]:
                if state not in STATES:
                    raise ValueError(f"unknown job state {state!r}")
                job.setdefault("history", []).append([_now(), state])
                logger.info(
                    "series %s: %s%s",
                    series_uid,
                    state,
                    f" ({changes['reason']})" if changes.get("reason") else "",
                )
            job.update(changes)
            self.save(job)
            return job

    def jobs(self) -> list[dict[str, Any]]:
        """Every job record, oldest first (by first instance received)."""
        records = []
        for path in sorted((self.root / "jobs").glob("*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                logger.error("%s: unreadable job record; skipped", path)
        return sorted(records, key=lambda job: job.get("first_received", ""))

    # -- receiving --------------------------------------------------------------------------------
    def store_instance(
        self, data: bytes, *, series_uid: str, study_uid: str, sop_uid: str, modality: str, calling_aet: str
    ) -> bool:
        """Keep one received instance (durably) and open or extend its series' job.

        Returns:
            False when this SOP Instance UID was already stored for the series (a resend; the file is
            replaced, nothing else changes), True for a new instance.
        """
        path = self.series_dir(series_uid) / f"{sop_uid}.dcm"
        with self._lock:
            new = not path.is_file()
            durable_write(path, data)
            self._last_received[series_uid] = time.monotonic()
            job = self.get(series_uid)
            if job is None:
                self.save(
                    _new_job(
                        series_uid,
                        study_uid=study_uid,
                        modality=modality,
                        calling_aet=calling_aet,
                        received=_now(),
                    )
                )
                logger.info("series %s: receiving from %s", series_uid, calling_aet)
            elif new and job["state"] != "receiving":
                # New instances for a series already queued or finished: it changed, so it is run again
                # as a new revision (new result UIDs; what was sent before stays sent).
                logger.info(
                    "series %s: new instances after %s; run again as revision %d",
                    series_uid,
                    job["state"],
                    job["revision"] + 1,
                )
                self.update(
                    series_uid,
                    state="receiving",
                    revision=job["revision"] + 1,
                    attempts=0,
                    reason=None,
                    results={},
                    sent=[],
                )
            return new

    def discard(self, series_uid: str) -> None:
        """Forget a series that was only partly fetched (its instances, results and record), so it is fetched anew."""
        import shutil

        with self._lock:
            for folder in (self.series_dir(series_uid), self.results_dir(series_uid)):
                shutil.rmtree(folder, ignore_errors=True)
            self._record_path(series_uid).unlink(missing_ok=True)
            self._last_received.pop(series_uid, None)

    def instance_count(self, series_uid: str) -> int:
        folder = self.series_dir(series_uid)
        return sum(1 for _ in folder.glob("*.dcm")) if folder.is_dir() else 0

    def complete_idle(self, idle_seconds: float) -> list[str]:
        """Queue the series that have received nothing for ``idle_seconds``; their UIDs."""
        queued = []
        now = time.monotonic()
        with self._lock:
            for job in self.jobs():
                uid = job["series_uid"]
                if job["state"] != "receiving":
                    continue
                last = self._last_received.get(uid)
                if last is None:  # received before a restart: count from the newest file
                    newest = max(
                        (p.stat().st_mtime for p in self.series_dir(uid).glob("*.dcm")), default=time.time()
                    )
                    last = now - max(0.0, time.time() - newest)
                    self._last_received[uid] = last
                if now - last >= idle_seconds:
                    self.update(
                        uid,
                        state="queued",
                        instances=self.instance_count(uid),
                        last_received=self.newest_received(uid),
                    )
                    queued.append(uid)
        return queued

    def newest_received(self, series_uid: str) -> str:
        """When the newest instance of a series was stored (its file's modification time, UTC)."""
        newest = max(
            (p.stat().st_mtime for p in self.series_dir(series_uid).glob("*.dcm")), default=time.time()
        )
        return datetime.fromtimestamp(newest, timezone.utc).isoformat(timespec="milliseconds")

    def recover(self) -> list[str]:
        """After a restart: jobs that were running are queued again (or failed after :data:`MAX_ATTEMPTS`).

        A series folder without a job record (the node was killed between storing a first instance
        and writing its record) gets one, so what was acknowledged is processed.
        """
        import pydicom

        recovered = []
        for folder in sorted(p for p in (self.root / "incoming").iterdir() if p.is_dir() and is_uid(p.name)):
            if self.get(folder.name) is not None or not any(folder.glob("*.dcm")):
                continue
            try:
                ds = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
            except Exception:  # unreadable: the job fails with the loader's reason
                ds = pydicom.Dataset()
            self.save(
                _new_job(
                    folder.name,
                    study_uid=str(ds.get("StudyInstanceUID", "")),
                    modality=str(ds.get("Modality", "")),
                    calling_aet="",
                    received=self.newest_received(folder.name),
                )
            )
            logger.info("series %s: instances without a job record found; receiving", folder.name)
        for job in self.jobs():
            if job["state"] != "running":
                continue
            if job.get("attempts", 0) >= MAX_ATTEMPTS:
                self.update(
                    job["series_uid"],
                    state="failed",
                    reason=f"the node stopped during each of {job['attempts']} attempts; not retried",
                )
            else:
                self.update(job["series_uid"], state="queued")
            recovered.append(job["series_uid"])
        return recovered

    def next_job(self) -> dict[str, Any] | None:
        """The oldest job with work to do: queued (to run) or sending (results not all acknowledged)."""
        for job in self.jobs():
            if job["state"] in ("queued", "sending"):
                return job
        return None

    def instances(self, series_uid: str) -> Iterator[Path]:
        yield from sorted(self.series_dir(series_uid).glob("*.dcm"))


def format_status(store: JobStore) -> str:
    """The job table ``voxpipe serve --status`` prints: one line per series, then counts per state."""
    jobs = store.jobs()
    if not jobs:
        return f"{store.root}: no jobs"
    lines = [f"{'state':<10} {'instances':>9}  {'received':<23}  {'series':<64}  reason / results"]
    for job in jobs:
        detail = job.get("reason") or ", ".join(
            f"{kind} sent" if item["sop_instance_uid"] in job.get("sent", []) else kind
            for kind, item in job.get("results", {}).items()
        )
        instances = (
            job["instances"] if "instances" in job else store.instance_count(job["series_uid"])
        )  # count files only if needed
        lines.append(
            f"{job['state']:<10} {instances:>9}  "
            f"{job.get('first_received', ''):<23.23}  {job['series_uid']:<64}  {detail}"
        )
    counts = {state: sum(job["state"] == state for job in jobs) for state in STATES}
    lines.append("  ".join(f"{state}: {n}" for state, n in counts.items() if n))
    return "\n".join(lines)
