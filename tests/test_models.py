"""``voxpipe models``: the catalogue, downloads from a local server (resumed, hash-checked, safely
unpacked), offline copies, and ``voxpipe infer total`` on a fake TotalSegmentator archive of the real
layout (five nnU-Net parts, 24 + 26 + 18 + 23 + 26 = 117 classes merged)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_nnunet_predict import make_image, make_model

from voxpipe.errors import BundleError, InputError
from voxpipe.pipelines.inference import catalogue
from voxpipe.pipelines.inference.catalogue import CATALOGUE, pull

PART_CLASSES = (24, 26, 18, 23, 26)  # TotalSegmentator v2's five parts


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, with HTTP Range (resumed downloads); counts requests per file."""

    seen: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        path = Path(self.directory) / self.path.lstrip("/")
        RangeHandler.seen.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.seen = []
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _zip_folder(folder: Path, archive: Path, prefix: str) -> Path:
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zipped.write(file, f"{prefix}/{file.relative_to(folder)}")
    return archive


def _total_archives(tmp_path: Path, served: Path) -> None:
    """Five archives named as TotalSegmentator's, each DatasetXXX/<Trainer>__nnUNetPlans__3d_fullres/..."""
    for index, (dataset, classes) in enumerate(zip(catalogue._TOTAL, PART_CLASSES, strict=True)):
        labels = {"background": 0, **{f"part{index + 1}_structure_{k}": k for k in range(1, classes + 1)}}
        work = tmp_path / "build" / dataset
        make_model(
            work,
            spacing=[3.0, 3.0, 3.0],
            patch=[16, 16, 16],
            schemes=["CTNormalization"],
            labels=labels,
            seed=10 * index,
        )
        trained = work / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        renamed = work / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
        trained.rename(renamed)
        _zip_folder(work, served / f"{dataset}.zip", dataset)


def test_the_catalogue_names_source_licence_classes_and_hashes():
    assert {
        "total",
        "total-fast",
        "lung_nodules",
        "liver_segments",
        "liver_lesions",
        "lung_vessels",
        "body",
    } <= set(CATALOGUE)
    assert {"wholeBody_ct_segmentation", "spleen_ct_segmentation", "lung_nodule_ct_detection"} <= set(
        CATALOGUE
    )
    total = CATALOGUE["total"]
    assert len(total.downloads) == 5 and total.step == 0.8
    assert all(
        d.url.startswith("https://github.com/wasserth/TotalSegmentator/releases/download/")
        for d in total.downloads
    )
    zoo = CATALOGUE["spleen_ct_segmentation"]
    assert any(d.hash == "md5:be4fa95e236df91766147c112ee6fafd" for d in zoo.downloads)
    text = catalogue.describe(total)
    assert "Apache-2.0" in text and "none published" in text


@pytest.mark.slow
def test_pull_then_infer_total_writes_one_117_class_map_with_statistics(tmp_path, server):
    from voxpipe.cli import main

    served, url = server
    _total_archives(tmp_path, served)
    cache = tmp_path / "cache"
    # an interrupted earlier download of the first part: the rest is fetched with a Range request
    first = served / f"{catalogue._TOTAL[0]}.zip"
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / f"{first.name}.part").write_bytes(first.read_bytes()[:1000])
    assert main(["models", "pull", "total", "--models-cache", str(cache), "--mirror", url]) == 0
    assert (f"/{first.name}", "bytes=1000-") in RangeHandler.seen
    assert (cache / "downloads" / first.name).read_bytes() == first.read_bytes()
    recorded = json.loads((cache / "hashes.json").read_text())
    assert (
        recorded[first.name] == hashlib.sha256(first.read_bytes()).hexdigest()
    )  # recorded at first download
    manifest = json.loads((cache / "total" / "voxpipe-model.json").read_text())
    assert len(manifest["labels"]) == 118 and manifest["labels"]["117"] == "part5_structure_26"
    assert manifest["parts"][1]["labels"]["1"] == 25  # vertebrae start after the 24 organs

    image = make_image(tmp_path / "ct_0000.nii.gz", shape=(20, 26, 24), spacing=(2.5, 2.5, 3.0))
    out = tmp_path / "out"
    assert main(["infer", "total", str(image), "-o", str(out), "--models-cache", str(cache)]) == 0
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct.nii.gz")))
    assert label.shape == (20, 26, 24) and label.max() <= 117
    # the merge: each part's own prediction, mapped, later parts over earlier ones
    from voxpipe.pipelines.inference.nnunet.model import NnUNetModel

    expected = np.zeros(label.shape, np.uint8)
    for part in manifest["parts"]:
        found, _ = NnUNetModel(cache / "total" / part["folder"], step=0.8).predict([image])
        for source, target in part["labels"].items():
            expected[found == int(source)] = target
    assert np.array_equal(label, expected)
    statistics = json.loads((out / "statistics.json").read_text())["ct"]
    assert len(statistics) == 117 and "part3_structure_1" in statistics

    # a DICOM series: one DICOM-SEG with a named segment per structure found, read back equal
    from test_deploy import write_series

    from voxpipe.transforms.dicom_seg import read_seg, seg_to_label_map
    from voxpipe.transforms.io import load_volume

    _, files = write_series(tmp_path / "series")
    series = files[0].parent
    seg_out = tmp_path / "seg_out"
    command = ["infer", "total", str(series), "-o", str(seg_out), "--dicom-seg", "--models-cache", str(cache)]
    assert main(command) == 0
    label = load_volume(seg_out / "series.nii.gz", label=True)
    present = sorted(int(v) for v in np.unique(label.array) if v)
    assert len(present) >= 5 and max(present) > 24  # structures of more than one part
    seg = read_seg(seg_out / "series.dcm")
    assert [seg.labels[k] for k in sorted(seg.labels)] == [manifest["labels"][str(v)] for v in present]
    renumbered = np.zeros(256, np.uint8)
    renumbered[present] = np.arange(1, len(present) + 1)
    assert np.array_equal(seg_to_label_map(seg, label.array.shape, label.affine), renumbered[label.array])


def test_offline_a_hand_copied_file_is_used_and_a_missing_one_names_url_and_place(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match=r"Dataset297.*offline") as error:
        pull("total-fast", cache, offline=True)
    assert "releases/download/v2.0.0-weights/Dataset297" in error.value.hint
    assert str(cache / "downloads") in error.value.hint


def test_a_hostile_archive_and_a_wrong_published_hash_are_refused(tmp_path, server):
    served, url = server
    with zipfile.ZipFile(served / "Dataset297_TotalSegmentator_total_3mm_1559subj.zip", "w") as zipped:
        zipped.writestr("../../escape.txt", "x")
    cache = tmp_path / "cache"
    with pytest.raises(BundleError, match="escape.txt"):
        pull("total-fast", cache, mirror=url)
    assert not (tmp_path / "escape.txt").exists() and not (cache / "total-fast").exists()
    (served / "spleen_ct_segmentation_v0.5.9.zip").write_bytes(b"")
    (served / "model_spleen_ct_segmentation_v1.pt").write_bytes(b"not the published weights")
    zipped = zipfile.ZipFile(served / "spleen_ct_segmentation_v0.5.9.zip", "w")
    zipped.writestr("spleen_ct_segmentation/configs/metadata.json", "{}")
    zipped.close()
    with pytest.raises(InputError, match=r"expected md5 be4fa95e236df91766147c112ee6fafd"):
        pull("spleen_ct_segmentation", cache, mirror=url)
    assert (cache / "downloads" / "model_spleen_ct_segmentation_v1.pt.bad").is_file()
