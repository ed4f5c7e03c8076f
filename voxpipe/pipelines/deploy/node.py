"""``voxpipe serve``: a DICOM node that segments the CT series a PACS sends it and sends the results back.

pynetdicom does the networking (a Storage SCP that receives, a Storage SCU that sends);
:mod:`voxpipe.pipelines.deploy.jobs` keeps instances and jobs on disk; the bundle's inference
(:func:`voxpipe.pipelines.inference.infer.infer_with_bundle`) segments; highdicom writes the
DICOM-SEG (:func:`voxpipe.transforms.dicom_seg.write_dicom_seg`) and the SR
(:mod:`voxpipe.pipelines.deploy.report`). What voxpipe adds is the policy a node next to a PACS needs
and neither library has: when a series is complete (nothing received for ``idle`` seconds), jobs
from an on-disk queue (one at a time, or a small bounded pool of workers, each with its own warm
network), a failed series recorded with its reason while the node goes on, results sent until the
destination acknowledges each one, and a restart that resumes from disk.

Safe by default: the SCP listens on 127.0.0.1 unless told otherwise, accepts associations only from
the allowed calling AE titles (by default the destination's), refuses instances whose UIDs are not
UIDs (they name files), and runs the bundle in safe mode unless ``trust_bundle``. Logs name series
UIDs and AE titles, never a patient's name or ID.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from voxpipe.errors import InputError, VoxpipeError
from voxpipe.pipelines.deploy.dimse import DeliveryError, Destination, parse_destination, send_dimse
from voxpipe.pipelines.deploy.jobs import JobStore, is_uid

logger = logging.getLogger(__name__)

BODY_HU = -500.0  # a CT voxel above this is tissue, not air
MIN_BODY_FRACTION = 0.01  # of the sampled slices' pixels; below it the series shows no body
MIN_FREE_BYTES = (
    256 * 2**20
)  # below this free space an instance is refused (out of resources), not half-stored
MAX_WORKERS = 8  # jobs in flight at once; each holds a network and a case's arrays in memory
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
# Status codes of C-STORE (PS3.4 B.2.3)
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC210


def result_uid(series_uid: str, revision: int, kind: str) -> str:
    """A UID for one result object, the same every time the job runs (so a rerun resends the same instance)."""
    return generate_uid(entropy_srcs=["voxpipe", series_uid, str(revision), kind])


def screen_series(folder: Path, *, modality: str | None) -> None:
    """Refuse, before the network runs, a series that is not for this bundle.

    Raises:
        InputError: the series' Modality is not the bundle's, or (CT) its sampled slices show no body.
    """
    from voxpipe.transforms.dicom import discover_series, slice_hu

    info = discover_series(folder)[0]
    found = sorted({str(ds.get("Modality", "")) or "none" for ds in info.headers})
    if modality and found != [modality]:
        raise InputError(
            f"{str(folder)!r}: expected Modality {modality} (the bundle's input), found {', '.join(found)}"
        )
    if modality == "CT":
        sample = info.files[:: max(1, len(info.files) // 8)][:8]
        above = total = 0
        for path in sample:
            hu = slice_hu(path)
            above += int((hu > BODY_HU).sum())
            total += hu.size
        if total and above / total < MIN_BODY_FRACTION:
            raise InputError(
                f"{str(folder)!r}: expected a body in the field of view, found "
                f"{100 * above / total:.2f}% of the sampled pixels above {BODY_HU:.0f} HU "
                f"(at least {100 * MIN_BODY_FRACTION:.0f}% expected)"
            )


class DicomNode:
    """Receive series, segment them one by one, send DICOM-SEG + SR to ``send_to`` (or STOW-RS them).

    Args:
        bundle: bundle folder whose inference config segments one series.
        workdir: the node's folder (instances, jobs, results, ``node.log``).
        ae_title: the node's AE title (the called AE title senders use).
        port, bind: where the Storage SCP listens (``port=0`` picks a free port: :attr:`port`).
        send_to: where results go (DIMSE); required unless ``dicomweb`` is given.
        allow_aet: calling AE titles accepted; default: the destination's AE title.
        idle: seconds without a new instance after which a series is complete.
        weights, overrides: as for ``voxpipe infer``.
        trust_bundle: run the bundle's code (default: safe mode).
        dicomweb: a DICOMweb base URL to poll (QIDO-RS), fetch from (WADO-RS) and, without
            ``send_to``, store to (STOW-RS); the Storage SCP is not started.
        poll: seconds between DICOMweb polls.
        retry: seconds before a failed delivery is tried again.
        workers: jobs in flight at once (1 to :data:`MAX_WORKERS`); each worker holds its own network,
            built at start-up. The queue stays on disk: a job is claimed by one worker at a time.

    Raises:
        InputError: bad options, missing weights, or a bundle refused by safe mode (at construction,
            before anything listens).
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        *,
        workdir: str | os.PathLike[str],
        ae_title: str = "VOXPIPE",
        port: int = 11112,
        bind: str = "127.0.0.1",
        send_to: str | Destination | None = None,
        allow_aet: Sequence[str] = (),
        idle: float = 5.0,
        weights: str | os.PathLike[str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        trust_bundle: bool = False,
        dicomweb: str | None = None,
        poll: float = 10.0,
        retry: float = 30.0,
        workers: int = 1,
    ) -> None:
        from voxpipe.runtime import optional_module

        optional_module("pynetdicom", extra="serve", feature="voxpipe serve (the DICOM node)")
        if dicomweb is not None:
            optional_module("dicomweb_client", extra="serve", feature="voxpipe serve --dicomweb")

        self.bundle = Path(bundle)
        self.store = JobStore(workdir)
        if not 1 <= len(ae_title.strip()) <= 16:
            raise InputError(f"--ae-title: expected 1 to 16 characters, found {ae_title!r}")
        self.ae_title = ae_title.strip()
        self.destination = parse_destination(send_to) if isinstance(send_to, str) else send_to
        if self.destination is None and dicomweb is None:
            raise InputError(
                "--send-to: expected the destination of the results (AET@HOST:PORT), found none",
                hint="give --send-to, or --dicomweb URL to poll and store over DICOMweb",
            )
        self.allow_aet = [a.strip() for a in allow_aet] or (
            [self.destination.ae_title] if self.destination else []
        )
        self.bind, self.port, self.idle, self.poll, self.retry = (
            bind,
            int(port),
            float(idle),
            float(poll),
            float(retry),
        )
        self.weights, self.overrides, self.safe = weights, dict(overrides or {}), not trust_bundle
        self.dicomweb_url = dicomweb
        if not 1 <= int(workers) <= MAX_WORKERS:
            raise InputError(f"--workers: expected 1 to {MAX_WORKERS} jobs in flight, found {workers}")
        self.workers = int(workers)
        self._engines: dict[int, tuple[Any, tuple[Any, ...], Any]] = {}  # worker → (engine, key, timings)
        self._engine_lock = threading.Lock()
        self._claim_lock = threading.Lock()
        self._busy: set[str] = set()  # series a worker of this node holds now
        self._local = threading.local()  # which worker this thread is
        from voxpipe.pipelines.deploy.models import NodeModel, node_model_kind

        self.kind = node_model_kind(bundle)  # a bundle, a TotalSegmentator task, an nnU-Net folder
        self._models: dict[int, NodeModel] = {}
        if self.kind != "bundle":
            if weights is not None or overrides:
                raise InputError(f"{str(bundle)!r}: --weights and --set are options of MONAI bundles")
            for worker in range(self.workers):  # every model loaded at start-up: a bad one stops the node
                self._models[worker] = NodeModel(bundle)
            self.modality = self._models[0].modality
        else:
            for worker in range(
                self.workers
            ):  # every model loaded at start-up: a bad bundle stops the node here
                self.engine(worker)
            self.modality = _bundle_modality(self.bundle)
        self._server: Any = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._retry_at: dict[str, float] = {}
        self._poller: Any = None
        self._log_handler: logging.Handler | None = None

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start listening (or polling) and the worker; returns at once."""
        self._log_handler = logging.FileHandler(self.store.root / "node.log")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._log_handler.setLevel(logging.INFO)
        package_logger = logging.getLogger("voxpipe")
        package_logger.addHandler(self._log_handler)
        if (
            package_logger.getEffectiveLevel() > logging.INFO
        ):  # node.log records every job's steps, whatever the console shows
            package_logger.setLevel(logging.INFO)
        _keep_patient_data_out_of_logs()
        recovered = self.store.recover()
        if recovered:
            logger.info(
                "restart: %d interrupted job(s) queued again: %s", len(recovered), ", ".join(recovered)
            )
        if self.dicomweb_url is None:
            self._server = self._start_scp()
            self.port = self._server.server_address[1]
            logger.info(
                "listening as %s on %s:%d (calling AE titles allowed: %s); results to %s",
                self.ae_title,
                self.bind,
                self.port,
                ", ".join(self.allow_aet) or "any",
                self.destination,
            )
        else:
            from voxpipe.pipelines.deploy.dicomweb import DicomwebPoller

            self._poller = DicomwebPoller(
                self.dicomweb_url, self.store, modality=self.modality, settle=self.idle
            )
            logger.info(
                "polling %s every %.0f s; results to %s",
                self.dicomweb_url,
                self.poll,
                self.destination or f"{self.dicomweb_url} (STOW-RS)",
            )
        self._threads = [threading.Thread(target=self._watch, name="voxpipe-node-watch", daemon=True)] + [
            threading.Thread(
                target=self._work, args=(worker,), name=f"voxpipe-node-worker-{worker}", daemon=True
            )
            for worker in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop listening; wait (up to ``timeout`` s) for the job in progress. Unfinished jobs resume at the next start."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        if self._log_handler is not None:
            logging.getLogger("voxpipe").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def serve_forever(self) -> None:
        """Start, then run until interrupted (Ctrl-C, SIGTERM)."""
        import signal

        self.start()
        previous = signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            logger.info("stopping")
            self.stop()

    # -- receiving --------------------------------------------------------------------------------
    def _start_scp(self) -> Any:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = self.allow_aet
        ae.require_called_aet = True
        ae.maximum_associations = 8
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected)]
        try:
            return ae.start_server((self.bind, self.port), block=False, evt_handlers=handlers)
        except OSError as error:
            raise InputError(
                f"--port {self.port}: could not listen on {self.bind}:{self.port} ({error.strerror or error})",
                hint="choose another port, or stop what is listening there",
            ) from error

    def _on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        logger.warning(
            "association from %s (%s) rejected: calling AE title not allowed (allowed: %s)",
            requestor.ae_title,
            requestor.address,
            ", ".join(self.allow_aet),
        )

    def _on_store(self, event: Any) -> int:
        """Keep one instance on disk, then acknowledge it (status codes of PS3.4 B.2.3)."""
        calling = str(event.assoc.requestor.ae_title)
        try:
            ds = event.dataset
            uids = {
                k: str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
            }
            if not uids[
                "SOPInstanceUID"
            ]:  # anonymisers blank it; the C-STORE request always names the instance
                uids["SOPInstanceUID"] = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
            modality = str(ds.get("Modality", ""))
        except Exception as error:  # the dataset does not decode
            logger.warning(
                "instance from %s refused: could not be decoded (%s)", calling, type(error).__name__
            )
            return CANNOT_UNDERSTAND
        bad = [k for k, v in uids.items() if not is_uid(v)]
        if bad:
            # The values are not logged: a field that is not a UID may hold anything, patient data included.
            logger.warning(
                "instance from %s refused: expected UIDs in %s, found other text", calling, ", ".join(bad)
            )
            return CANNOT_UNDERSTAND
        if shutil.disk_usage(self.store.root).free < MIN_FREE_BYTES:
            logger.error(
                "instance %s from %s refused: less than %d MiB free in %s",
                uids["SOPInstanceUID"],
                calling,
                MIN_FREE_BYTES // 2**20,
                self.store.root,
            )
            return OUT_OF_RESOURCES
        try:
            self.store.store_instance(
                event.encoded_dataset(include_meta=True),
                series_uid=uids["SeriesInstanceUID"],
                study_uid=uids["StudyInstanceUID"],
                sop_uid=uids["SOPInstanceUID"],
                modality=modality,
                calling_aet=calling,
            )
        except OSError as error:
            logger.error(
                "instance %s from %s refused: could not be stored (%s)",
                uids["SOPInstanceUID"],
                calling,
                error.strerror or error,
            )
            return OUT_OF_RESOURCES
        return SUCCESS

    # -- working ----------------------------------------------------------------------------------
    def _watch(self) -> None:
        """Poll DICOMweb when due and queue the series that went quiet, apart from the workers: a
        long job must not hold back the series the other workers could take."""
        next_poll = 0.0
        while not self._stop.is_set():
            try:
                if self._poller is not None and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll
                    self._poller.poll()
                self.store.complete_idle(self.idle)
            except Exception:  # the node must go on: log the bug and keep serving
                logger.exception("node watcher error; continuing")
                self._stop.wait(1.0)
            self._stop.wait(0.2)

    def _work(self, worker: int = 0) -> None:
        self._local.worker = worker
        while not self._stop.is_set():
            try:
                uid = self._claim()
                if uid is None:
                    self._stop.wait(0.2)
                    continue
                try:
                    self.process(uid)
                finally:
                    with self._claim_lock:
                        self._busy.discard(uid)
            except Exception:  # the node must go on: log the bug and keep serving
                logger.exception("node worker error; continuing")
                self._stop.wait(1.0)

    def _claim(self) -> str | None:
        """The oldest job with work to do that no other worker holds; marked as held."""
        with self._claim_lock:
            job = self._next_job()
            if job is None:
                return None
            self._busy.add(job["series_uid"])
            return str(job["series_uid"])

    def _next_job(self) -> dict[str, Any] | None:
        now = time.monotonic()
        for job in self.store.jobs():
            if job["series_uid"] in self._busy:
                continue
            if job["state"] == "queued" or (
                job["state"] == "sending" and self._retry_at.get(job["series_uid"], 0) <= now
            ):
                return job
        return None

    def process(self, series_uid: str) -> dict[str, Any]:
        """Run one job as far as it goes now: predict (if queued), then send what is unsent."""
        from voxpipe.pipelines.inference.cases import InferenceFailed

        job = self.store.get(series_uid)
        if job is None:
            raise KeyError(series_uid)
        if job["state"] == "queued":
            job = self.store.update(
                series_uid, state="running", attempts=job.get("attempts", 0) + 1, reason=None
            )
            started = time.monotonic()
            redact = patient_data_redactor(self.store.series_dir(series_uid))
            try:
                results = self._predict(job)
            except InferenceFailed as error:  # the one case's own reason, not the batch summary
                return self.store.update(
                    series_uid, state="failed", reason=redact(next(iter(error.failures.values())))
                )
            except VoxpipeError as error:
                return self.store.update(
                    series_uid, state="failed", reason=redact(str(error).splitlines()[0])
                )
            except Exception as error:  # voxpipe's bug: recorded, and the node goes on with the next series
                import traceback

                logger.error(
                    "series %s: internal error\n%s",
                    series_uid,
                    redact("".join(traceback.format_exception(error))),
                )
                return self.store.update(
                    series_uid,
                    state="failed",
                    reason=redact(f"internal error: {type(error).__name__}: {error}"),
                )
            job = self.store.update(
                series_uid,
                state="sending",
                results=results,
                inference_seconds=round(time.monotonic() - started, 3),
            )
        if job["state"] == "sending":
            job = self._deliver(job)
        return job

    def engine(self, worker: int | None = None) -> Any:
        """The worker's warm inference engine (default: the calling worker's, 0 outside the workers):
        built at start-up, reused for every series, rebuilt only when the bundle's configs or the
        weights file change on disk (their times and sizes)."""
        return self._engine_and_timings(worker)[0]

    def _engine_and_timings(self, worker: int | None = None) -> tuple[Any, Any]:
        from voxpipe.pipelines.inference.engine import InferenceEngine, engine_key
        from voxpipe.pipelines.inference.infer import weights_path
        from voxpipe.pipelines.inference.timings import Timings

        worker = getattr(self._local, "worker", 0) if worker is None else worker
        weights = weights_path(self.bundle, self.weights)
        key = engine_key(self.bundle, weights)
        with self._engine_lock:  # one build at a time: each holds a network's worth of memory while it loads
            held = self._engines.get(worker)
            if held is None or key != held[1]:
                if held is not None:
                    logger.info(
                        "%s: the bundle or its weights changed on disk; worker %d reloads the model",
                        self.bundle,
                        worker,
                    )
                timings = Timings()
                engine = InferenceEngine(
                    self.bundle,
                    overrides={
                        "checkpoint": str(weights.resolve()),
                        "output_dir": str((self.store.root / "results").resolve()),
                        "progress": False,
                        **self.overrides,
                    },
                    safe=self.safe,
                    before_run=timings.instrument,
                )
                held = self._engines[worker] = (engine, key, timings)
            return held[0], held[2]

    def _predict(self, job: dict[str, Any]) -> dict[str, dict[str, str]]:
        """Segment the series; write the label map, statistics, DICOM-SEG and SR; their paths and UIDs."""
        import json

        from voxpipe.pipelines.inference.infer import infer_with_bundle, label_names
        from voxpipe.transforms.io import case_id, load_volume

        uid, revision = job["series_uid"], job.get("revision", 0)
        series = self.store.series_dir(uid)
        out = self.store.results_dir(uid)
        if out.exists():  # what an interrupted run left; the results are made again (same UIDs)
            shutil.rmtree(out)
        screen_series(series, modality=self.modality)
        if self.kind != "bundle":
            model = self._models[getattr(self._local, "worker", 0)]
            label, names, statistics = model.segment(series, out)
            return self._write_results(uid, revision, series, out, label, names, statistics)
        engine, timings = self._engine_and_timings()
        timings.seconds.clear()  # this series' stages only
        [label_path] = infer_with_bundle(
            self.bundle,
            [series],
            output_dir=out,
            weights=self.weights,
            overrides=self.overrides,
            safe=self.safe,
            progress=False,
            timings=timings,
            engine=engine,
        )
        self.store.update(uid, stage_seconds={k: round(v, 6) for k, v in timings.seconds.items()})
        statistics = json.loads((out / "statistics.json").read_text())[case_id(series)]
        label = load_volume(label_path, label=True).array
        return self._write_results(uid, revision, series, out, label, label_names(self.bundle), statistics)

    def _write_results(
        self,
        uid: str,
        revision: int,
        series: Path,
        out: Path,
        label: Any,
        names: Mapping[int, str],
        statistics: Mapping[str, Any],
    ) -> dict[str, dict[str, str]]:
        """The DICOM-SEG and the SR of one segmented series; their paths (from the work folder) and UIDs."""
        from voxpipe.pipelines.deploy.report import write_seg_and_report

        uids = {kind: result_uid(uid, revision, kind) for kind in ("seg", "seg-series", "sr", "sr-series")}
        # a bundle names all its labels (absent ones as empty segments); other models the ones found
        written = write_seg_and_report(
            label, series, out, names, statistics, uids, only_found=self.kind != "bundle"
        )
        return {
            kind: {"path": str(path.relative_to(self.store.root)), "sop_instance_uid": uids[kind]}
            for kind, path in written.items()
        }

    def _deliver(self, job: dict[str, Any]) -> dict[str, Any]:
        uid = job["series_uid"]
        pending = [item for item in job["results"].values() if item["sop_instance_uid"] not in job["sent"]]
        paths = [self.store.root / item["path"] for item in pending]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:  # results deleted by hand: made again (same UIDs), then sent
            logger.warning("series %s: results %s are gone; the series is run again", uid, ", ".join(missing))
            return self.store.update(uid, state="queued")
        try:
            if self.destination is not None:
                acknowledged = send_dimse(paths, self.destination, calling_aet=self.ae_title)
            else:
                acknowledged = self._poller.stow(paths)
        except DeliveryError as error:
            sent = job["sent"] + [u for u in error.acknowledged if u not in job["sent"]]
            self._retry_at[uid] = time.monotonic() + self.retry
            logger.warning("series %s: delivery failed (%s); retry in %.0f s", uid, error, self.retry)
            return self.store.update(uid, sent=sent, last_error=str(error))
        sent = job["sent"] + [u for u in acknowledged if u not in job["sent"]]
        received = datetime.fromisoformat(job["last_received"])
        seconds = (datetime.now(timezone.utc) - received).total_seconds()
        self._retry_at.pop(uid, None)
        return self.store.update(
            uid, state="done", sent=sent, last_error=None, seconds_from_last_instance=round(seconds, 3)
        )


# Patient-identifying attributes (PS3.15 E.1 basic profile, the ones a library message might quote).
_IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "ReferringPhysicianName",
    "IssuerOfPatientID",
    "MedicalRecordLocator",
    "PatientMotherBirthName",
    "PatientBirthName",
)


def patient_data_redactor(series: Path) -> Any:
    """A function that replaces, in a message, every identifying value of the series' first instance by ``<redacted>``.

    Failure reasons come from many libraries; some quote header values (highdicom: "Unable to convert
    '1961-07-14' to 'DA'"). Reasons go to the job record and the log, so they are redacted first.
    """
    import pydicom

    values: set[str] = set()
    first = next(iter(sorted(series.glob("*.dcm"))), None)
    if first is not None:
        try:
            ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=list(_IDENTIFYING))
            for keyword in _IDENTIFYING:
                element = ds.get(keyword)
                raw = element if not isinstance(element, pydicom.DataElement) else element.value
                for value in raw if isinstance(raw, (list, pydicom.multival.MultiValue)) else [raw]:
                    text = str(value or "").strip()
                    values.update(part for part in {text, *text.replace("^", " ").split()} if len(part) >= 3)
        except Exception:  # an unreadable header: nothing to redact from it
            pass
    ordered = sorted(values, key=len, reverse=True)

    def redact(message: str) -> str:
        for value in ordered:
            message = message.replace(value, "<redacted>")
        return message

    return redact


def _keep_patient_data_out_of_logs() -> None:
    """Silence the libraries that would print header values: pynetdicom's debug output dumps whole
    datasets, and pydicom's validation warnings quote the offending value (a too-long PatientName)."""
    import warnings

    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    warnings.filterwarnings("ignore", message=r"(?s).*Invalid value for VR")


def _bundle_modality(bundle: Path) -> str | None:
    """The input modality in the bundle's metadata (``network_data_format.inputs.image.modality``), if stated."""
    import json

    try:
        metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
        return str(metadata["network_data_format"]["inputs"]["image"]["modality"]).upper() or None
    except (OSError, ValueError, KeyError, TypeError):
        return None
