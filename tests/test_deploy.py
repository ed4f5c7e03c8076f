"""The DICOM node (`voxpipe serve`): real pynetdicom peers in every run, a real Orthanc where installed.

The network is the oracle of tests/helpers.py, so the SEG that comes back must equal the phantom's
label voxel for voxel on the source series' grid: any difference is a geometry error between the
received slices and the DICOM-SEG. The peers are pynetdicom applications in this process, on free
localhost ports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from helpers import OracleNet, OrthancServer, engine_counts, free_port, label_image, orthanc_binary, require
from pydicom.uid import generate_uid

from voxpipe.errors import InputError
from voxpipe.phantoms.ct import liver_phantom
from voxpipe.phantoms.dicom import write_dicom_series
from voxpipe.pipelines.deploy.jobs import JobStore, format_status, is_uid
from voxpipe.pipelines.deploy.node import Destination, DicomNode, parse_destination
from voxpipe.pipelines.deploy.report import read_report_volumes
from voxpipe.transforms.dicom import dicom_geometry
from voxpipe.transforms.dicom_seg import read_seg, seg_to_label_map

pynetdicom = require("pynetdicom")

ORACLE = {
    "network_def": {"_target_": "helpers.OracleNet"},
    "patch_size": [32, 32, 16],
    "pixdim": [0.0, 0.0, 0.0],
}
# A birth date in the wrong format: pydicom's validation warnings quote such values, if let through.
PATIENT_NAME, PATIENT_ID, BIRTH_DATE = "Doe^Janet", "MRN-31415926", "1961-07-14"
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def oracle_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("oracle") / "model.pt"
    torch.save(OracleNet().state_dict(), path)
    return path


def write_series(folder: Path, *, seed: int = 3, modality: str = "CT", hu: np.ndarray | None = None):
    """A tiny liver phantom as a CT series whose HU encode the label; patient data that must never be logged."""
    phantom = liver_phantom(seed, size="tiny")
    files = write_dicom_series(
        label_image(phantom.label) if hu is None else hu, phantom.affine, folder, modality=modality
    )
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, BIRTH_DATE
        ds.save_as(path, enforce_file_format=True)
    return phantom, files


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Peer:
    """A PACS stand-in: a pynetdicom Storage SCP that keeps what it receives."""

    def __init__(self, folder: Path, ae_title: str = "PACS") -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.received: list[str] = []
        self.ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax)
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = self.server.server_address[1]
        self.ae_title = ae_title

    def _store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(self.folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        self.received.append(str(ds.SOPInstanceUID))
        return 0x0000

    def by_modality(self, modality: str) -> list[Path]:
        return [
            p
            for p in sorted(self.folder.glob("*.dcm"))
            if pydicom.dcmread(p, stop_before_pixels=True).Modality == modality
        ]

    def destination(self) -> Destination:
        return Destination(self.ae_title, "127.0.0.1", self.port)

    def stop(self) -> None:
        self.server.shutdown()


def send_series(files, port: int, *, calling: str = "PACS", called: str = "VOXPIPE") -> list[int] | None:
    """C-STORE the files to the node; their status codes, or None when the association was refused."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    datasets = [pydicom.dcmread(path) for path in files]
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    association = ae.associate("127.0.0.1", port, ae_title=called)
    if not association.is_established:
        return None
    try:
        return [int(association.send_c_store(ds).Status) for ds in datasets]
    finally:
        association.release()


@pytest.fixture
def peer(tmp_path):
    peer = Peer(tmp_path / "pacs")
    yield peer
    peer.stop()


def make_node(bundle, workdir, destination, weights, **options) -> DicomNode:
    options = {"port": 0, "idle": 0.5, "overrides": ORACLE, "trust_bundle": True, **options}
    return DicomNode(bundle, workdir=workdir, send_to=destination, weights=weights, **options)


def test_destinations_and_uids_are_parsed_strictly():
    assert parse_destination("ORTHANC@127.0.0.1:4242") == Destination("ORTHANC", "127.0.0.1", 4242)
    assert parse_destination("MY PACS@[::1]:104") == Destination("MY PACS", "::1", 104)
    for bad in ("ORTHANC@127.0.0.1", "@host:1", "A" * 17 + "@h:1", "X@h:70000", "X@h:port"):
        with pytest.raises(InputError, match="AET@HOST:PORT"):
            parse_destination(bad)
    assert is_uid("1.2.840.10008.5.1.4.1.1.2") and not is_uid("../../etc/passwd") and not is_uid("1." * 40)


def test_series_round_trip_seg_on_the_source_grid_and_sr_equal_to_statistics(
    liver_bundle, oracle_weights, tmp_path, peer, caplog, capfd
):
    import logging

    caplog.set_level(logging.DEBUG)
    phantom, files = write_series(tmp_path / "series")
    caplog.clear()  # what writing the test series printed is the test's, not the node's
    capfd.readouterr()
    node = make_node(liver_bundle, tmp_path / "node", peer.destination(), oracle_weights)
    node.start()
    try:
        assert send_series(files, node.port) == [0] * len(files)
        series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        job = wait_for(
            lambda: (j := node.store.get(series_uid)) and j["state"] in ("done", "failed") and j,
            what="the job",
        )
    finally:
        node.stop()
    assert job["state"] == "done", job.get("reason")
    assert job["instances"] == len(files) and job["calling_aet"] == "PACS"
    # Where the job's time went (the oracle network takes well under a millisecond: present, not positive).
    assert {"network", "invert", "write"} <= set(job["stage_seconds"]) and min(
        job["stage_seconds"].values()
    ) >= 0
    [seg_file], [sr_file] = peer.by_modality("SEG"), peer.by_modality("SR")
    # The SEG references the source series and lands exactly on its grid.
    seg_ds = pydicom.dcmread(seg_file)
    assert seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert seg_ds.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID
    shape, affine = dicom_geometry(tmp_path / "series")
    assert np.array_equal(seg_to_label_map(read_seg(seg_file), shape, affine), phantom.label)
    # The SR's figures are statistics.csv's.
    import csv

    [row] = list(csv.DictReader((node.store.results_dir(series_uid) / "statistics.csv").open()))
    report = read_report_volumes(sr_file)
    assert report["segment 1: liver"]["Volume"] == pytest.approx(float(row["liver_volume_ml"]), rel=1e-5)
    assert report["segment 2: tumour"]["Volume"] == pytest.approx(float(row["tumour_volume_ml"]), rel=1e-5)
    assert report["segment 2: tumour"]["Count"] == float(row["tumour_lesion_count"])
    assert report["segment 2: tumour"]["Maximum Diameter"] == pytest.approx(
        float(row["tumour_largest_lesion_diameter_mm"]), rel=1e-5
    )
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    assert report["segment 1: liver"]["Volume"] == pytest.approx(
        (phantom.label == 1).sum() * voxel_ml, rel=1e-5
    )
    # Patient data never reach the log; UIDs do.
    log = (tmp_path / "node" / "node.log").read_text()
    assert series_uid in log and not {PATIENT_NAME, "Janet", PATIENT_ID, BIRTH_DATE} & set(log.split())
    console = caplog.text + "".join(capfd.readouterr())
    assert series_uid in console
    assert [
        secret
        for secret in (PATIENT_NAME, "Janet", PATIENT_ID, BIRTH_DATE)
        if secret in console or secret in log
    ] == []
    assert "done: 1" in format_status(JobStore(tmp_path / "node"))


def test_a_series_without_tumour_gets_an_sr_with_volume_zero(tmp_path):
    """The common case next to a PACS: nothing of one class found. Its segment has no frames in the SEG;
    the SR still reports it (highdicom's from_segmentation alone refuses such a segment)."""
    from voxpipe.pipelines.deploy.report import write_measurement_report
    from voxpipe.transforms.dicom import discover_series
    from voxpipe.transforms.dicom_seg import write_dicom_seg

    phantom, files = write_series(tmp_path / "series", seed=3)
    label = (phantom.label > 0).astype(np.uint8)  # liver only: no tumour voxel
    seg = write_dicom_seg(label, tmp_path / "series", tmp_path / "seg.dcm", names={1: "liver", 2: "tumour"})
    statistics = {
        "liver": {"volume_ml": 12.5},
        "tumour": {"volume_ml": 0.0, "lesion_count": 0, "largest_lesion_diameter_mm": 0.0},
    }
    sr = write_measurement_report(
        seg,
        discover_series(tmp_path / "series")[0].headers,
        statistics,
        tmp_path / "sr.dcm",
        sop_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
    )
    report = read_report_volumes(sr)
    assert report["segment 1: liver"]["Volume"] == 12.5
    assert report["segment 2: tumour"] == {"Volume": 0.0, "Count": 0.0, "Maximum Diameter": 0.0}


def test_unknown_calling_ae_title_is_rejected_and_bad_uids_refused(
    liver_bundle, oracle_weights, tmp_path, peer
):
    _, files = write_series(tmp_path / "series")
    node = make_node(liver_bundle, tmp_path / "node", peer.destination(), oracle_weights)
    node.start()
    try:
        assert send_series(files[:1], node.port, calling="STRANGER") is None
        assert send_series(files[:1], node.port, called="SOMEONE_ELSE") is None
        hostile = pydicom.dcmread(files[0])
        hostile.SeriesInstanceUID = "../../../escaped"
        hostile.save_as(tmp_path / "hostile.dcm", enforce_file_format=True)
        assert send_series([tmp_path / "hostile.dcm"], node.port) == [0xC210]
    finally:
        node.stop()
    assert node.store.jobs() == [] and not list(tmp_path.rglob("escaped*"))
    log = (tmp_path / "node" / "node.log").read_text()
    assert "STRANGER" in log and "rejected" in log and "expected UIDs in SeriesInstanceUID" in log


def test_failing_series_are_recorded_with_reasons_and_the_good_one_is_processed(
    liver_bundle, oracle_weights, tmp_path, peer
):
    series = {}
    phantom, series["good"] = write_series(tmp_path / "good", seed=3)
    _, series["mr"] = write_series(tmp_path / "mr", seed=4, modality="MR")
    _, series["air"] = write_series(
        tmp_path / "air", seed=5, hu=np.full(phantom.label.shape, -1000, np.int16)
    )
    _, series["broken"] = write_series(tmp_path / "broken", seed=6)
    broken = pydicom.dcmread(series["broken"][2])
    del broken.ImagePositionPatient
    broken.save_as(series["broken"][2], enforce_file_format=True)
    node = make_node(liver_bundle, tmp_path / "node", peer.destination(), oracle_weights)
    node.start()
    try:
        for name in ("mr", "broken", "air", "good"):  # the good one last: the others must not stop it
            assert send_series(series[name], node.port) == [0] * len(series[name])
        uids = {name: str(pydicom.dcmread(files[0]).SeriesInstanceUID) for name, files in series.items()}
        jobs = wait_for(
            lambda: (
                (js := {n: node.store.get(u) for n, u in uids.items()})
                and all(j and j["state"] in ("done", "failed") for j in js.values())
                and js
            ),
            what="four jobs",
        )
    finally:
        node.stop()
    assert jobs["good"]["state"] == "done"
    assert (
        jobs["mr"]["state"] == "failed"
        and "expected Modality CT" in jobs["mr"]["reason"]
        and "found MR" in jobs["mr"]["reason"]
    )
    assert jobs["air"]["state"] == "failed" and "expected a body" in jobs["air"]["reason"]
    assert jobs["broken"]["state"] == "failed" and "ImagePositionPatient" in jobs["broken"]["reason"]
    assert str(broken.SOPInstanceUID) in jobs["broken"]["reason"]  # the slice is named
    assert len(peer.by_modality("SEG")) == 1 and len(peer.by_modality("SR")) == 1


def test_promise_back_to_back_series_share_one_model_load_and_a_weights_change_reloads_it(
    liver_bundle, oracle_weights, tmp_path, peer, engines
):
    import shutil

    weights = tmp_path / "weights.pt"
    shutil.copy(oracle_weights, weights)
    node = make_node(liver_bundle, tmp_path / "node", peer.destination(), weights)
    assert engine_counts(engines)[:2] == (1, 1)  # loaded at start-up
    node.start()
    try:
        uids = []
        for seed in (11, 12, 13):
            _, files = write_series(tmp_path / f"s{seed}", seed=seed)
            assert send_series(files, node.port) == [0] * len(files)
            uids.append(str(pydicom.dcmread(files[0]).SeriesInstanceUID))
        wait_for(
            lambda: all((j := node.store.get(u)) and j["state"] == "done" for u in uids), what="three jobs"
        )
        assert engine_counts(engines)[:2] == (1, 1)  # three series, one model load
        weights.write_bytes(oracle_weights.read_bytes())  # "new" weights on disk: the node reloads once
        import os

        os.utime(weights, ns=(1, 1))
        _, files = write_series(tmp_path / "s14", seed=14)
        assert send_series(files, node.port) == [0] * len(files)
        uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        wait_for(lambda: (j := node.store.get(uid)) and j["state"] == "done", what="the fourth job")
    finally:
        node.stop()
    assert engine_counts(engines)[:2] == (2, 2)
    assert len(peer.by_modality("SEG")) == 4


def test_a_pool_of_workers_each_with_its_own_warm_network_takes_each_job_once(
    liver_bundle, oracle_weights, tmp_path, peer, engines
):
    import threading

    import torch

    threads = torch.get_num_threads()  # the node leaves the process's threads alone (serve's CLI shares them)
    with pytest.raises(InputError, match="--workers: expected 1 to 8"):
        make_node(liver_bundle, tmp_path / "bad", peer.destination(), oracle_weights, workers=9)
    node = make_node(liver_bundle, tmp_path / "node", peer.destination(), oracle_weights, workers=2)
    try:
        assert engine_counts(engines)[:2] == (2, 2)  # one network per worker
        assert node.engine(0) is not node.engine(1)
        seen: list[tuple[str, str, float, float]] = []
        predict = node._predict
        pairs = threading.Barrier(
            2, timeout=60
        )  # each job waits for a second one in flight: both workers busy

        def recording(job):
            started = time.monotonic()
            try:
                pairs.wait()
                return predict(job)
            finally:
                seen.append((threading.current_thread().name, job["series_uid"], started, time.monotonic()))

        node._predict = recording
        node.start()
        try:
            uids = []
            for seed in (21, 22, 23, 24):
                _, files = write_series(tmp_path / f"s{seed}", seed=seed)
                assert send_series(files, node.port) == [0] * len(files)
                uids.append(str(pydicom.dcmread(files[0]).SeriesInstanceUID))
            jobs = wait_for(
                lambda: (
                    (js := [node.store.get(u) for u in uids])
                    and all(j and j["state"] == "done" for j in js)
                    and js
                ),
                what="four jobs",
            )
        finally:
            node.stop()
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    assert sorted(uid for _, uid, _, _ in seen) == sorted(uids)  # each series run once
    assert all(j["attempts"] == 1 for j in jobs)
    assert {name for name, *_ in seen} == {"voxpipe-node-worker-0", "voxpipe-node-worker-1"}
    assert engine_counts(engines)[:2] == (2, 2)  # no rebuild per series
    assert len(peer.by_modality("SEG")) == 4


def test_results_are_kept_until_the_destination_takes_them(liver_bundle, oracle_weights, tmp_path):
    _, files = write_series(tmp_path / "series")
    down = Destination("PACS", "127.0.0.1", free_port())
    node = make_node(liver_bundle, tmp_path / "node", down, oracle_weights, retry=0.3)
    node.start()
    try:
        send_series(files, node.port)
        uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        job = wait_for(
            lambda: (j := node.store.get(uid)) and j.get("last_error") and j, what="a failed delivery"
        )
        assert job["state"] == "sending" and "could not open an association" in job["last_error"]
        peer = Peer(tmp_path / "pacs")
        try:
            node.destination = peer.destination()  # the PACS comes back (on another port here)
            wait_for(lambda: node.store.get(uid)["state"] == "done", what="delivery after the retry")
            assert sorted(peer.received) == sorted(
                item["sop_instance_uid"] for item in job["results"].values()
            )
        finally:
            peer.stop()
    finally:
        node.stop()


def test_the_bundle_runs_in_safe_mode_unless_trusted(liver_bundle, oracle_weights, tmp_path):
    from voxpipe.errors import BundleError

    with pytest.raises(BundleError, match="helpers.OracleNet"):
        make_node(
            liver_bundle,
            tmp_path / "node",
            Destination("PACS", "127.0.0.1", 104),
            oracle_weights,
            trust_bundle=False,
        )
    with pytest.raises(InputError, match="--send-to"):
        DicomNode(liver_bundle, workdir=tmp_path / "node", weights=oracle_weights)
    with pytest.raises(InputError, match="expected network weights"):
        DicomNode(
            liver_bundle,
            workdir=tmp_path / "node",
            send_to="PACS@127.0.0.1:104",
            weights=tmp_path / "none.pt",
        )


def _serve_process(liver_bundle, oracle_weights, workdir, peer, port):
    """``voxpipe serve`` as its own process (the kill test needs one to kill)."""
    command = [
        sys.executable,
        "-m",
        "voxpipe.cli",
        "serve",
        str(liver_bundle),
        "--workdir",
        str(workdir),
        "--port",
        str(port),
        "--send-to",
        f"PACS@127.0.0.1:{peer.port}",
        "--idle",
        "0.5",
        "--weights",
        str(oracle_weights),
        "--trust-bundle",
        "--set",
        f"network_def={json.dumps(ORACLE['network_def'])}",
        "--set",
        "patch_size=[32, 32, 16]",
        "--set",
        "pixdim=[0.0, 0.0, 0.0]",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    output = workdir.parent / f"serve-{time.monotonic_ns()}.out"
    with output.open("w") as stream:  # a file, not a pipe: a full pipe would block the node
        process = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT)
    wait_for(lambda: process.poll() is not None or _listening(port), timeout=120, what="the node to listen")
    assert process.poll() is None, output.read_text()
    return process


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_kill_9_mid_job_then_restart_completes_once_and_sends_once(
    liver_bundle, oracle_weights, tmp_path, peer
):
    _, files = write_series(tmp_path / "series")
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    workdir, port = tmp_path / "node", free_port()
    store = JobStore(workdir)
    process = _serve_process(liver_bundle, oracle_weights, workdir, peer, port)
    try:
        assert send_series(files, port) == [0] * len(files)  # acknowledged: on disk from here on
        wait_for(lambda: (j := store.get(uid)) and j["state"] == "running", what="the job to start")
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert store.get(uid)["state"] == "running" and peer.received == []
    for restart in range(2):  # the second restart finds nothing to do and sends nothing
        process = _serve_process(liver_bundle, oracle_weights, workdir, peer, port)
        try:
            job = wait_for(
                lambda: (j := store.get(uid)) and j["state"] == "done" and j,
                timeout=180,  # a fresh process imports torch and loads the model first: slow on a loaded CI machine
                what="the job after restart",
            )
            time.sleep(1.5)  # anything sent twice would arrive by now
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        assert len(peer.received) == 2 and sorted(peer.received) == sorted(job["sent"]), restart
    assert job["attempts"] == 2 and [state for _, state in job["history"]].count("running") == 2
    assert "restart: 1 interrupted job(s) queued again" in (workdir / "node.log").read_text()


def test_status_command_lists_the_jobs(tmp_path, capsys):
    from voxpipe.cli.main import main

    store = JobStore(tmp_path / "node")
    uid = generate_uid()
    store.store_instance(
        b"x",
        series_uid=uid,
        study_uid=generate_uid(),
        sop_uid=generate_uid(),
        modality="CT",
        calling_aet="PACS",
    )
    store.update(uid, state="failed", reason="expected Modality CT, found MR")
    assert main(["serve", "--status", str(tmp_path / "node")]) == 0
    out = capsys.readouterr().out
    assert uid in out and "failed" in out and "found MR" in out and "failed: 1" in out
    assert main(["serve", "--workdir", str(tmp_path / "node")]) == 2  # no bundle


def test_new_instances_for_a_finished_series_run_it_again(tmp_path):
    store = JobStore(tmp_path)
    series, study = generate_uid(), generate_uid()
    first = generate_uid()
    assert store.store_instance(
        b"a", series_uid=series, study_uid=study, sop_uid=first, modality="CT", calling_aet="PACS"
    )
    store.update(
        series, state="done", sent=["1.2.3"], results={"seg": {"path": "x", "sop_instance_uid": "1.2.3"}}
    )
    assert not store.store_instance(
        b"a", series_uid=series, study_uid=study, sop_uid=first, modality="CT", calling_aet="PACS"
    )
    assert store.get(series)["state"] == "done"  # a resend of the same instance changes nothing
    store.store_instance(
        b"b", series_uid=series, study_uid=study, sop_uid=generate_uid(), modality="CT", calling_aet="PACS"
    )
    job = store.get(series)
    assert job["state"] == "receiving" and job["revision"] == 1 and job["sent"] == []
    assert store.complete_idle(0.0) == [series] and store.get(series)["instances"] == 2


# -- Orthanc: a real PACS, where installed ----------------------------------------------------------
@pytest.fixture
def orthanc(tmp_path):
    """A fresh Orthanc on free localhost ports; skipped when Orthanc is not installed (a user's machine)."""
    if orthanc_binary() is None:
        if os.environ.get("VOXPIPE_REQUIRE_ORTHANC") == "1":
            pytest.fail(
                "Orthanc is required here (VOXPIPE_REQUIRE_ORTHANC=1) but not installed: apt-get install orthanc"
            )
        pytest.skip("Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)")
    node_port = free_port()
    server = OrthancServer(tmp_path / "orthanc", modalities={"voxpipe": ("VOXPIPE", node_port)})
    server.node_port = node_port
    yield server
    server.stop()


def _check_results_in_orthanc(orthanc, tmp_path, phantom, source: Path, node_dir: Path):
    wait_for(
        lambda: orthanc.series("SEG") and orthanc.series("SR"), timeout=120, what="the SEG and SR in Orthanc"
    )
    [seg_file] = orthanc.download(orthanc.series("SEG")[0], tmp_path / "from-orthanc" / "seg")
    [sr_file] = orthanc.download(orthanc.series("SR")[0], tmp_path / "from-orthanc" / "sr")
    shape, affine = dicom_geometry(source)
    assert np.array_equal(seg_to_label_map(read_seg(seg_file), shape, affine), phantom.label)
    series_uid = pydicom.dcmread(next(source.glob("*.dcm"))).SeriesInstanceUID
    assert pydicom.dcmread(seg_file).ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    import csv

    [row] = list(csv.DictReader((node_dir / "results" / series_uid / "statistics.csv").open()))
    report = read_report_volumes(sr_file)
    assert report["segment 1: liver"]["Volume"] == pytest.approx(float(row["liver_volume_ml"]), rel=1e-5)
    assert report["segment 2: tumour"]["Volume"] == pytest.approx(float(row["tumour_volume_ml"]), rel=1e-5)
    assert report["segment 2: tumour"]["Count"] == float(row["tumour_lesion_count"])


@pytest.mark.slow
def test_orthanc_sends_a_series_and_receives_seg_and_sr_over_dimse(
    liver_bundle, oracle_weights, tmp_path, orthanc
):
    phantom, files = write_series(tmp_path / "series")
    orthanc.upload(files)  # into Orthanc over its REST API, as a modality would have stored it
    node = make_node(
        liver_bundle,
        tmp_path / "node",
        Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port),
        oracle_weights,
        port=orthanc.node_port,
    )
    node.start()
    try:
        [ct] = orthanc.series("CT")
        orthanc.send(ct["ID"], "voxpipe")  # Orthanc C-STOREs the series to the node
        _check_results_in_orthanc(orthanc, tmp_path, phantom, tmp_path / "series", tmp_path / "node")
    finally:
        node.stop()
    [job] = node.store.jobs()
    assert job["state"] == "done" and job["calling_aet"] == "ORTHANC"


@pytest.mark.slow
def test_orthanc_dicomweb_poll_fetch_and_stow(liver_bundle, oracle_weights, tmp_path, orthanc):

    if not orthanc.dicomweb:
        if os.environ.get("VOXPIPE_REQUIRE_ORTHANC") == "1":
            pytest.fail("orthanc-dicomweb is required here but not installed")
        pytest.skip("the Orthanc DICOMweb plugin is not installed (Debian: orthanc-dicomweb)")
    phantom, files = write_series(tmp_path / "series")
    orthanc.upload(files)
    node = DicomNode(
        liver_bundle,
        workdir=tmp_path / "node",
        dicomweb=f"{orthanc.url}/dicom-web",
        poll=0.3,
        idle=0.5,
        weights=oracle_weights,
        overrides=ORACLE,
        trust_bundle=True,
    )
    node.start()
    try:
        _check_results_in_orthanc(orthanc, tmp_path, phantom, tmp_path / "series", tmp_path / "node")
        time.sleep(1.0)  # more polls: the node's own SEG/SR are not fetched, the CT is not run twice
    finally:
        node.stop()
    [job] = node.store.jobs()
    assert job["state"] == "done" and job["calling_aet"] == "DICOMweb" and job["instances"] == len(files)
    assert len(orthanc.series("SEG")) == 1


def test_instances_stored_before_a_kill_without_a_record_are_recovered(tmp_path):
    _, files = write_series(tmp_path / "series")
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    store = JobStore(tmp_path / "node")
    (store.series_dir(uid)).mkdir(parents=True)
    for path in files[:3]:  # acknowledged, then killed before the job record was written
        (store.series_dir(uid) / f"{pydicom.dcmread(path).SOPInstanceUID}.dcm").write_bytes(path.read_bytes())
    restarted = JobStore(tmp_path / "node")
    restarted.recover()
    job = restarted.get(uid)
    assert job["state"] == "receiving" and job["modality"] == "CT"
    assert restarted.complete_idle(0.0) == [uid] and restarted.get(uid)["instances"] == 3


def test_status_of_a_folder_that_is_not_a_node_is_an_error(tmp_path):
    from voxpipe.cli.main import main

    assert main(["serve", "--status", str(tmp_path / "nothing")]) == 2
    assert not (tmp_path / "nothing").exists()


def test_failure_reasons_are_redacted_of_patient_data(tmp_path):
    from voxpipe.pipelines.deploy.node import patient_data_redactor

    _, files = write_series(tmp_path / "series")
    redact = patient_data_redactor(tmp_path / "series")
    message = f"Unable to convert '{BIRTH_DATE}' to 'DA'; patient {PATIENT_NAME} ({PATIENT_ID}), Janet"
    assert (
        redact(message)
        == "Unable to convert '<redacted>' to 'DA'; patient <redacted> (<redacted>), <redacted>"
    )
    assert patient_data_redactor(tmp_path / "nothing")("kept as is") == "kept as is"


def test_a_partly_fetched_series_is_discarded_whole(tmp_path):
    store = JobStore(tmp_path)
    series = generate_uid()
    store.store_instance(
        b"a",
        series_uid=series,
        study_uid=generate_uid(),
        sop_uid=generate_uid(),
        modality="CT",
        calling_aet="DICOMweb",
    )
    store.discard(series)
    assert (
        store.get(series) is None and not store.series_dir(series).exists() and store.complete_idle(0.0) == []
    )


def test_a_totalsegmentator_task_serves_named_sided_segments_and_an_sr_with_volume_and_mean_hu(
    tmp_path, peer, monkeypatch
):
    from totalseg_oracle import case_affine, phantom_array
    from totalseg_weights import make_weights

    from voxpipe.pipelines.inference.stats import case_statistics
    from voxpipe.pipelines.inference.totalseg.pipeline import TotalSegmentator
    from voxpipe.pipelines.inference.totalseg.run import read_image
    from voxpipe.transforms.io import load_volume

    weights = tmp_path / "weights"
    make_weights(weights, "total", prefer=["kidney_left", "liver", "spleen"])
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(weights))
    hu = phantom_array((40, 36, 24), seed=2).astype(np.int16)
    files = write_dicom_series(hu, case_affine("LPS", (1.6, 1.6, 2.5), (40, 36, 24)), tmp_path / "series")
    node = DicomNode("total", workdir=tmp_path / "node", send_to=peer.destination(), port=0, idle=0.5)
    node.start()
    try:
        assert send_series(files, node.port) == [0] * len(files)
        series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        job = wait_for(
            lambda: (j := node.store.get(series_uid)) and j["state"] in ("done", "failed") and j,
            what="the job",
        )
    finally:
        node.stop()
    assert job["state"] == "done", job.get("reason")
    [seg_file], [sr_file] = peer.by_modality("SEG"), peer.by_modality("SR")
    # the map is TotalSegmentator's on the series as voxpipe loads it
    from voxpipe.pipelines.inference.totalseg.run import on_grid_of

    image = read_image(tmp_path / "series")
    expected = TotalSegmentator(weights, device="cpu").run(image, "total")
    volume = load_volume(tmp_path / "series")
    labels = np.asarray(on_grid_of(expected.image, volume.affine).dataobj)
    assert np.array_equal(
        seg_to_label_map(read_seg(seg_file), volume.array.shape, volume.affine) > 0, labels > 0
    )
    segments = pydicom.dcmread(seg_file).SegmentSequence
    present = [expected.labels[v] for v in sorted(int(v) for v in np.unique(labels) if v)]
    assert [str(s.SegmentLabel) for s in segments] == present and "kidney_left" in present  # every one found
    kidney = next(s for s in segments if s.SegmentLabel == "kidney_left").SegmentedPropertyTypeCodeSequence[0]
    assert (
        kidney.CodeMeaning == "Kidney"
        and kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    )
    statistics = case_statistics(labels, volume.affine, names=expected.labels, image=np.asarray(volume.array))
    report = read_report_volumes(sr_file)
    for number, segment in enumerate(segments, start=1):
        figures = report[f"segment {number}: {segment.SegmentLabel}"]
        assert figures["Volume"] == pytest.approx(statistics[segment.SegmentLabel]["volume_ml"], rel=1e-6)
        assert figures["Mean Attenuation Coefficient"] == pytest.approx(
            statistics[segment.SegmentLabel]["mean"], rel=1e-6
        )
