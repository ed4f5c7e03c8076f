"""``voxpipe models``: the catalogue, downloads from a local server (resumed, hash-checked, safely
unpacked), offline copies, and ``voxpipe models pull total`` then ``voxpipe infer total`` on fake
TotalSegmentator archives of the real layout (its five parts, 117 classes, and its 3 mm and 6 mm models)."""

from __future__ import annotations

import http.server
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_nnunet_predict import make_image

from voxpipe.errors import BundleError, InputError
from voxpipe.pipelines.inference import catalogue
from voxpipe.pipelines.inference.catalogue import CATALOGUE, pull


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


def _total_archives(tmp_path: Path, served: Path) -> list[str]:
    """TotalSegmentator's archives for ``total`` (its five parts, the 3 mm and 6 mm models), each
    ``DatasetNNN_name/<trainer>__nnUNetPlans__3d_fullres/...`` as its releases hold them."""
    from totalseg_weights import make_weights

    from voxpipe.pipelines.inference.totalseg import tasks

    built = tmp_path / "build"
    make_weights(built, "total", prefer=["liver"])
    make_weights(built, "total", fast=True)
    make_weights(built, "total", fastest=True)
    names = []
    for entry in CATALOGUE["total"].parts:
        _zip_folder(built / entry, served / f"{entry}.zip", entry)
        names.append(entry)
    assert names[:5] == [tasks.dataset_folder(i) for i in (291, 292, 293, 294, 295)]
    return names


def test_the_catalogue_names_source_licence_classes_and_hashes():
    from voxpipe.pipelines.inference.totalseg.tasks import OPEN_TASKS

    assert set(OPEN_TASKS) <= set(CATALOGUE) and "total-fast" not in CATALOGUE
    assert {"wholeBody_ct_segmentation", "spleen_ct_segmentation", "lung_nodule_ct_detection"} <= set(
        CATALOGUE
    )
    total = CATALOGUE["total"]
    assert total.kind == "totalseg" and len(total.downloads) == 7  # 5 parts, the 3 mm and 6 mm models
    assert all(
        d.url.startswith("https://github.com/wasserth/TotalSegmentator/releases/download/v2.0.0-weights/")
        for d in total.downloads
    )
    nodules = CATALOGUE["lung_nodules"]  # its own model and the 6 mm crop model
    assert [d.url.rsplit("/", 1)[1] for d in nodules.downloads] == [
        "Dataset913_lung_nodules.zip",
        "Dataset298_TotalSegmentator_total_6mm_1559subj.zip",
    ]
    zoo = CATALOGUE["spleen_ct_segmentation"]
    assert any(d.hash == "md5:be4fa95e236df91766147c112ee6fafd" for d in zoo.downloads)
    text = catalogue.describe(total)
    assert "Apache-2.0" in text and "none published" in text


@pytest.mark.slow
def test_pull_total_into_totalsegmentators_layout_then_infer_total(tmp_path, server):
    from voxpipe.cli import main
    from voxpipe.pipelines.inference.totalseg.tasks import classes

    served, url = server
    names = _total_archives(tmp_path, served)
    cache, weights = tmp_path / "cache", tmp_path / "weights"
    # an interrupted earlier download of the first part: the rest is fetched with a Range request
    first = served / f"{names[0]}.zip"
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / f"{first.name}.part").write_bytes(first.read_bytes()[:1000])
    pull_command = ["models", "pull", "total", "--models-cache", str(cache), "--mirror", url]
    assert main([*pull_command, "--weights-dir", str(weights)]) == 0
    assert (f"/{first.name}", "bytes=1000-") in RangeHandler.seen
    assert (cache / "downloads" / first.name).read_bytes() == first.read_bytes()
    assert not (cache / "hashes.json").exists()  # a mirror's bytes are never the publisher's hash
    for name in names:  # TotalSegmentator's own layout: where it (and voxpipe) looks
        assert (weights / name).is_dir() and any(
            (weights / name).glob("*__nnUNetPlans__3d_fullres/plans.json")
        )
    RangeHandler.seen = []
    assert main([*pull_command, "--weights-dir", str(weights)]) == 0 and RangeHandler.seen == []  # kept

    image = make_image(tmp_path / "ct.nii.gz", shape=(20, 26, 24), spacing=(2.5, 2.5, 3.0))
    out = tmp_path / "out"
    assert (
        main(["infer", "total", str(image), "-o", str(out), "--weights-dir", str(weights), "--device", "cpu"])
        == 0
    )
    files = sorted(p.name[: -len(".nii.gz")] for p in (out / "ct").glob("*.nii.gz"))
    assert files == sorted(classes("total").values())  # one mask per structure, TotalSegmentator's names
    assert json.loads((out / "totalseg.json").read_text())["models"] == [291, 292, 293, 294, 295]

    # a DICOM series: one DICOM-SEG with a named segment per structure found, read back equal
    from test_deploy import write_series

    from voxpipe.transforms.dicom_seg import read_seg, seg_to_label_map
    from voxpipe.transforms.io import load_volume

    _, series_files = write_series(tmp_path / "series")
    series = series_files[0].parent
    seg_out = tmp_path / "seg_out"
    command = [
        "infer",
        "total",
        str(series),
        "-o",
        str(seg_out),
        "--dicom-seg",
        "--ml",
        "--weights-dir",
        str(weights),
    ]
    assert main(command) == 0
    label = load_volume(seg_out / "series.nii.gz", label=True)
    present = sorted(int(v) for v in np.unique(label.array) if v)
    assert len(present) >= 2
    seg = read_seg(seg_out / "series.dcm")
    assert [seg.labels[k] for k in sorted(seg.labels)] == [classes("total")[v] for v in present]
    renumbered = np.zeros(256, np.uint8)
    renumbered[present] = np.arange(1, len(present) + 1)
    assert np.array_equal(seg_to_label_map(seg, label.array.shape, label.affine), renumbered[label.array])


def test_offline_a_hand_copied_file_is_used_and_a_missing_one_names_url_and_place(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match=r"Dataset913.*offline") as error:
        pull("lung_nodules", cache, offline=True, weights=tmp_path / "weights")
    assert "releases/download/v2.5.0-weights/Dataset913_lung_nodules.zip" in error.value.hint
    assert str(cache / "downloads") in error.value.hint


def test_a_hostile_archive_and_a_wrong_published_hash_are_refused(tmp_path, server):
    served, url = server
    with zipfile.ZipFile(served / "Dataset913_lung_nodules.zip", "w") as zipped:
        zipped.writestr("../../escape.txt", "x")
    cache = tmp_path / "cache"
    with pytest.raises(BundleError, match="escape.txt"):
        pull("lung_nodules", cache, mirror=url, weights=tmp_path / "weights")
    assert (
        not (tmp_path / "escape.txt").exists()
        and not (tmp_path / "weights" / "Dataset913_lung_nodules").exists()
    )
    with zipfile.ZipFile(served / "Dataset913_lung_nodules.zip", "w") as zipped:
        zipped.writestr("something_else/readme.txt", "x")
    # the refused archive was moved aside, so this pull starts clean
    assert (cache / "downloads" / "Dataset913_lung_nodules.zip.bad").is_file()
    assert not (cache / "downloads" / "Dataset913_lung_nodules.zip").exists()
    with pytest.raises(BundleError, match="Dataset913_lung_nodules/<trainer>"):
        pull("lung_nodules", cache, mirror=url, weights=tmp_path / "weights")
    (served / "spleen_ct_segmentation_v0.5.9.zip").write_bytes(b"")
    (served / "model_spleen_ct_segmentation_v1.pt").write_bytes(b"not the published weights")
    zipped = zipfile.ZipFile(served / "spleen_ct_segmentation_v0.5.9.zip", "w")
    zipped.writestr("spleen_ct_segmentation/configs/metadata.json", "{}")
    zipped.close()
    with pytest.raises(InputError, match=r"expected sha1 8e99230050906d0d3cec484010598aa138201892"):
        pull("spleen_ct_segmentation", cache, mirror=url)  # the Model Zoo's published checksum
    assert (cache / "downloads" / "spleen_ct_segmentation_v0.5.9.zip.bad").is_file()
    weights = next(d for d in CATALOGUE["spleen_ct_segmentation"].downloads if d.path)
    with pytest.raises(InputError, match=r"expected md5 be4fa95e236df91766147c112ee6fafd"):
        catalogue.fetch_file(weights, cache, mirror=url)
    assert (cache / "downloads" / "model_spleen_ct_segmentation_v1.pt.bad").is_file()


def test_promise_a_pulled_bundle_runs_in_safe_mode_unless_trust_bundle(tmp_path, liver_bundle, capsys):
    """A Model Zoo bundle pulled by name is a stranger's code: `voxpipe infer NAME` refuses its `$`
    expressions (naming --trust-bundle), and runs it with --trust-bundle."""
    import shutil

    import torch
    from helpers import OracleNet
    from test_hostile_inputs import one_error_line

    from voxpipe.cli import main
    from voxpipe.phantoms.ct import liver_phantom
    from voxpipe.transforms.io import write_volume

    cache = tmp_path / "cache"
    folder = cache / "spleen_ct_segmentation"
    shutil.copytree(liver_bundle, folder / "spleen_ct_segmentation")
    inference = folder / "spleen_ct_segmentation" / "configs" / "inference.yaml"
    inference.write_text(inference.read_text() + '\nzoo_expression: "$1 + 1"\n')
    (folder / "voxpipe-model.json").write_text(
        json.dumps({"name": "spleen_ct_segmentation", "kind": "bundle", "bundle": "spleen_ct_segmentation"})
    )
    weights = tmp_path / "oracle.pt"
    torch.save(OracleNet().state_dict(), weights)
    phantom = liver_phantom(3, size="tiny")
    image = write_volume(phantom.label.astype(np.int16) * 100, phantom.affine, tmp_path / "ct.nii.gz")
    command = [
        "infer", "spleen_ct_segmentation", str(image), "-o", str(tmp_path / "out"), "--models-cache", str(cache),
        "--weights", str(weights), "--set", 'network_def={"_target_": "helpers.OracleNet"}',
        "--set", "patch_size=[32, 32, 16]", "--set", "pixdim=[0.0, 0.0, 0.0]",
    ]  # fmt: skip
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "safe mode refused" in err and "zoo_expression" in err and "--trust-bundle" in err
    assert not (tmp_path / "out" / "ct.nii.gz").exists()
    assert main([*command, "--trust-bundle"]) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "ct.nii.gz").is_file()
    assert main(["infer", str(liver_bundle), str(image), "-o", str(tmp_path / "o2"), "--trust-bundle"]) == 2
    assert "--trust-bundle is for bundles pulled by name" in one_error_line(capsys.readouterr().err)
