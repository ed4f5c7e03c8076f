"""Bad input gets one line naming the culprit and exit 2, never a partial output, and the good cases
of a batch still finish: each test names the promise it checks, on files made to be awkward."""

from __future__ import annotations

import gzip
import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import OracleNet, label_image

from voxpipe.cli import main
from voxpipe.errors import GeometryError, InputError
from voxpipe.phantoms.ct import liver_phantom
from voxpipe.pipelines.data.datalists import dataset_label_groups, dataset_label_values
from voxpipe.pipelines.inference.cases import InferenceFailed
from voxpipe.pipelines.inference.infer import infer_with_bundle
from voxpipe.transforms.files import atomic_path, remove_stale_temporaries
from voxpipe.transforms.io import load_volume, read_geometry, write_volume

ORACLE = {
    "network_def": {"_target_": "helpers.OracleNet"},
    "patch_size": [32, 32, 16],
    "pixdim": [0.0, 0.0, 0.0],
}


def nifti_bytes(shape=(8, 8, 8), dtype=np.int16) -> bytearray:
    image = nib.Nifti1Image(np.zeros(shape, dtype), np.eye(4))
    return bytearray(image.header.binaryblock + b"\0" * 4 + np.zeros(shape, dtype).tobytes())


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("voxpipe: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- headers that lie -------------------------------------------------------------------------


@pytest.mark.parametrize("dims,compress", [(1024, False), (1024, True), (32767, True), (100000, False)])
def test_promise_a_lying_header_is_refused_before_allocating(tmp_path, capsys, dims, compress):
    raw = nifti_bytes()
    struct.pack_into("<8h", raw, 40, 3, min(dims, 32767), min(dims, 32767), min(dims, 32767), 1, 1, 1, 1)
    if dims > 32767:  # NIfTI-1 dims are int16; 100000 needs NIfTI-2's int64 dims
        header = nib.Nifti2Header()
        header.set_data_shape((dims, dims, dims))
        header.set_data_dtype(np.int16)
        raw = bytearray(header.binaryblock + b"\0" * 4 + b"\0" * 4096)
    path = tmp_path / ("lie.nii.gz" if compress else "lie.nii")
    path.write_bytes(gzip.compress(bytes(raw)) if compress else bytes(raw))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main(["data", "convert", str(path), "-o", str(tmp_path / "out.nii.gz")]) == 2
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    line = one_error_line(capsys.readouterr().err)
    assert (
        str(path) in line
        and "the header declares" in line
        and ("holds only" in line or "expected at most" in line)
    )
    assert grown_mib < 100 and not (tmp_path / "out.nii.gz").exists()


def test_promise_a_volume_larger_than_memory_is_refused_before_decompressing(tmp_path, monkeypatch):
    """A gzip bomb declares its size honestly; what stops it is the memory it would take."""
    from voxpipe.transforms import headers

    header = nib.Nifti1Header()
    header.set_data_shape((256, 256, 256))
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), 1)
    with gzip.open(tmp_path / "bomb.nii.gz", "wb", compresslevel=1) as handle:
        handle.write(header.binaryblock + b"\0" * 4 + b"\0" * (256**3 * 2))
    assert (tmp_path / "bomb.nii.gz").stat().st_size < 200_000
    assert read_geometry(tmp_path / "bomb.nii.gz")[0] == (256, 256, 256)  # honest, and fits here
    monkeypatch.setattr(headers, "available_memory", lambda: 64 * 2**20)
    opened = []
    counting = headers._gzip_size_at_least
    monkeypatch.setattr(headers, "_gzip_size_at_least", lambda *a: opened.append(a) or counting(*a))
    with pytest.raises(
        InputError, match=r"bomb.nii.gz'.*needs about 0.1 GiB, more than the 0.1 GiB of memory available"
    ):
        read_geometry(tmp_path / "bomb.nii.gz")
    assert opened == []  # refused from the header, nothing decompressed


def test_promise_truncated_mha_and_nrrd_data_are_named(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8, 8), np.int16)), str(tmp_path / "ok.mha"))
    data = (tmp_path / "ok.mha").read_bytes()
    (tmp_path / "cut.mha").write_bytes(data[:-300])
    (tmp_path / "cut.nrrd").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 8\nencoding: raw\n\n" + "x" * 100
    )
    for name in ("cut.mha", "cut.nrrd"):
        with pytest.raises(InputError, match=rf"{name}'.*declares 8 × 8 × 8 voxels.*holds only"):
            read_geometry(tmp_path / name)
    assert read_geometry(tmp_path / "ok.mha")[0] == (8, 8, 8)


# --- voxels and geometry ------------------------------------------------------------------------


def test_promise_nan_inf_and_complex_voxels_are_refused_everywhere(tmp_path, liver_bundle, capsys):
    volume = np.zeros((16, 16, 8), np.float32)
    volume[0, 0, 0], volume[1, 1, 1], volume[2, 2, 2] = np.nan, np.inf, -np.inf
    nib.Nifti1Image(volume, np.eye(4)).to_filename(tmp_path / "nan.nii.gz")
    nib.Nifti1Image(np.zeros((16, 16, 8), np.complex64), np.eye(4)).to_filename(tmp_path / "complex.nii.gz")
    with pytest.raises(InputError, match=r"nan.nii.gz'.*1 NaN and 2 ±Inf voxels"):
        load_volume(tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match=r"complex.nii.gz'.*complex64"):
        load_volume(tmp_path / "complex.nii.gz")
    assert main(["data", "convert", str(tmp_path / "nan.nii.gz"), "-o", str(tmp_path / "x.nii.gz")]) == 2
    assert "NaN" in one_error_line(capsys.readouterr().err)


def _raw_nifti(tmp_path: Path, name: str, *, pixdim=(1.0, 1.0, 1.0), codes=(1, 1), sform=None) -> Path:
    raw = nifti_bytes()
    struct.pack_into("<8f", raw, 76, 1, *pixdim, 1, 1, 1, 1)
    struct.pack_into("<hh", raw, 252, *codes)
    if sform is not None:
        struct.pack_into("<12f", raw, 280, *sform)
    path = tmp_path / name
    path.write_bytes(bytes(raw))
    return path


def test_promise_unplaceable_geometry_is_refused_and_a_fallback_is_named(tmp_path, caplog):
    no_spacing = _raw_nifti(tmp_path, "pixdim0.nii", pixdim=(0.0, 0.0, 0.0), codes=(0, 0))
    with pytest.raises(
        GeometryError, match=r"pixdim0.nii'.*no qform or sform.*pixdim\[1:4\] = \[0.0, 0.0, 0.0\]"
    ):
        load_volume(no_spacing)
    zero = _raw_nifti(tmp_path, "zero.nii", codes=(0, 2), sform=[0.0] * 12)
    with pytest.raises(GeometryError, match=r"zero.nii'.*spacing along axis 0 is 0 mm"):
        read_geometry(zero)
    fallback = _raw_nifti(tmp_path, "fallback.nii", pixdim=(0.8, 0.8, 2.5), codes=(0, 0))
    assert np.allclose(load_volume(fallback).spacing, (0.8, 0.8, 2.5))
    assert (
        "fallback.nii: no qform or sform" in caplog.text
        and "assumed voxel sizes [0.800000011920929" in caplog.text
    )


@pytest.mark.parametrize(
    "header,why",
    [
        ("NDims = 3\nDimSize = 8 8\nElementType = MET_SHORT\n", "DimSize '8 8': expected 3 positive sizes"),
        ("NDims = 3\nDimSize = 8 8 8\nElementType = MET_FOO\n", "ElementType 'MET_FOO': expected one of"),
        ("NDims = 3\nElementType = MET_SHORT\n", "the header has no DimSize field"),
    ],
)
def test_promise_header_faults_of_itk_formats_are_one_line(tmp_path, capfd, header, why):
    """Checked before ITK reads (ITK's MetaIO would print its own complaint to the process's stderr)."""
    (tmp_path / "bad.mha").write_text("ObjectType = Image\n" + header + "ElementDataFile = LOCAL\n")
    assert main(["data", "convert", str(tmp_path / "bad.mha"), "-o", str(tmp_path / "o.nii.gz")]) == 2
    out, err = capfd.readouterr()
    line = one_error_line(err)
    assert "bad.mha" in line and why in line
    assert "MetaImage" not in out + err and "ITK ERROR" not in line


def test_promise_itks_reason_comes_from_a_child_and_other_threads_keep_their_output(tmp_path, capfd):
    """A file ITK itself rejects: its printed reason is got by re-reading in a child process, so this
    process's stdout/stderr are never redirected (another thread's lines all arrive, none in the reason)."""
    import threading

    from voxpipe.errors import InputError

    raw = tmp_path / "bad.nrrd"
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 8\nspace: left-posterior-superior\n"
        "space directions: (1,0) (0,1,0) (0,0,1)\nencoding: raw\nendian: little\n\n"
    )
    raw.write_bytes(header.encode() + np.zeros(512, np.int16).tobytes())
    done = threading.Event()

    def chatter():
        for k in range(200):
            os.write(2, f"other-thread-line-{k}\n".encode())
        done.set()

    thread = threading.Thread(target=chatter)
    thread.start()
    with pytest.raises(InputError) as error:
        for _ in range(3):
            load_volume(raw)
    thread.join()
    _, err = capfd.readouterr()
    assert "bad.nrrd" in str(error.value) and "other-thread-line" not in str(error.value)
    assert all(f"other-thread-line-{k}\n" in err for k in range(200))


def test_promise_a_damaged_compressed_stream_is_refused_not_read_as_zeros(tmp_path):
    """ITK prints "Uncompress failed" and returns zeros; the stream is counted before ITK reads it."""
    from voxpipe.errors import InputError

    raw = tmp_path / "bad.mha"
    raw.write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_SHORT\nCompressedData = True\n"
        b"CompressedDataSize = 20\nElementDataFile = LOCAL\nnot zlib data at all"
    )
    with pytest.raises(InputError, match=r"bad.mha'"):
        load_volume(raw)


def test_promise_a_detached_header_whose_data_lie_elsewhere_is_refused(tmp_path):
    from voxpipe.errors import InputError

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "scan.raw").write_bytes(np.full(512, 40, np.int16).tobytes())
    (tmp_path / "in").mkdir()
    for name, data_file in (
        ("up.mhd", "../elsewhere/scan.raw"),
        ("abs.mhd", str(tmp_path / "elsewhere" / "scan.raw")),
    ):
        (tmp_path / "in" / name).write_text(
            "ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_SHORT\n"
            f"ElementDataFile = {data_file}\n"
        )
        with pytest.raises(
            InputError, match=rf"{name}': the header's data file .* lies outside the header's folder"
        ):
            load_volume(tmp_path / "in" / name)
        assert load_volume(tmp_path / "in" / name, allow_external_data=True).array.max() == 40
    (tmp_path / "in" / "scan.raw").write_bytes(np.full(512, 7, np.int16).tobytes())
    (tmp_path / "in" / "here.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_SHORT\nElementDataFile = scan.raw\n"
    )
    assert load_volume(tmp_path / "in" / "here.mhd").array.max() == 7


def test_promise_a_nifti_whose_qform_and_sform_disagree_is_refused(tmp_path):
    import nibabel as nib

    from voxpipe.errors import GeometryError

    image = nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4))
    rotated = np.array([[0, -1, 0, 50.0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    image.set_sform(np.eye(4), code=1)
    image.set_qform(rotated, code=1)
    nib.save(image, tmp_path / "two.nii.gz")
    with pytest.raises(GeometryError, match=r"two.nii.gz': the qform and sform disagree .* origins by 50 mm"):
        load_volume(tmp_path / "two.nii.gz")
    image.set_qform(np.eye(4) + np.diag([1e-4, 0, 0, 0]), code=1)  # float32 rounding-sized: agrees
    nib.save(image, tmp_path / "same.nii.gz")
    assert load_volume(tmp_path / "same.nii.gz").array.shape == (8, 8, 8)


# --- outputs and exit codes ---------------------------------------------------------------------


def test_promise_output_paths_that_cannot_be_written_are_the_users_problem(tmp_path, capsys):
    image = write_volume(np.zeros((8, 8, 8), np.int16), np.eye(4), tmp_path / "in.nii.gz")
    (tmp_path / "folder.nii.gz").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for target, expected in (
        (tmp_path / "folder.nii.gz", "found a folder at that path"),
        (tmp_path / "file.txt" / "out.nii.gz", "file.txt' is a file"),
    ):
        assert main(["data", "convert", str(image), "-o", str(target)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(target) in line and expected in line


def test_promise_an_output_folder_below_a_file_is_named_before_the_model_runs(tmp_path, liver_bundle, capsys):
    image = write_volume(np.zeros((8, 8, 8), np.int16), np.eye(4), tmp_path / "in.nii.gz")
    (tmp_path / "somefile.txt").write_text("x")
    for command in ("infer", "detect"):
        target = tmp_path / "somefile.txt" / "out"
        assert main([command, str(liver_bundle), str(image), "-o", str(target)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(target) in line and "somefile.txt' above it is a file" in line, line
    assert main(["infer", str(liver_bundle), str(image), "-o", str(tmp_path / "somefile.txt")]) == 2
    assert "found a file at that path" in one_error_line(capsys.readouterr().err)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 kB tmpfs (root only: skipped on a user's machine)."""
    mount = tmp_path / "tiny_disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_promise_disk_full_is_exit_2_naming_the_path(tmp_path, tiny_disk, capsys):
    rng = np.random.default_rng(0)
    image = write_volume(
        rng.integers(-1000, 1000, (64, 64, 64)).astype(np.int16), np.eye(4), tmp_path / "big.nii.gz"
    )
    target = tiny_disk / "out.nii.gz"
    assert main(["data", "convert", str(image), "-o", str(target)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(target) in line and "No space left on device" in line
    assert list(tiny_disk.iterdir()) == []  # no partial output, no temporary left


def test_promise_disk_full_during_infer_still_lists_every_case(liver_bundle, tmp_path, tiny_disk):
    weights = tmp_path / "oracle.pt"
    torch.save(OracleNet().state_dict(), weights)
    inputs = []
    for index in range(3):
        phantom = liver_phantom(50 + index, size="tiny")
        inputs.append(
            write_volume(label_image(phantom.label), phantom.affine, tmp_path / "in" / f"case{index}.nii.gz")
        )
    (tiny_disk / "out").mkdir()
    with open(tiny_disk / "filler", "wb", buffering=0) as filler:  # fill the disk to the last byte
        try:
            while True:
                filler.write(os.urandom(4096))
        except OSError:
            pass
    with pytest.raises(InferenceFailed) as failed:
        infer_with_bundle(
            liver_bundle, inputs, output_dir=tiny_disk / "out", weights=weights, overrides=ORACLE
        )
    message = str(failed.value)
    assert "No space left on device" in message and all(str(p) in message for p in inputs)
    assert message.count("not run") >= 1 and failed.value.exit_code == 2


def test_promise_a_killed_runs_temporaries_are_removed_on_start_and_only_this_hosts(tmp_path):
    """Shards on several machines write into one folder: a late shard removes only its own host's
    leftovers of dead processes, never another host's half-written file (whose pid means nothing here)."""
    import hashlib
    import socket

    folder = tmp_path / "out"
    folder.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    here = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    other = "0123abcd" if here != "0123abcd" else "4567cdef"
    stale = folder / f".case.nii.gz.{here}-{dead}-abcd1234.tmp.nii.gz"
    elsewhere = folder / f".case4.nii.gz.{other}-{dead}-abcd1234.tmp.nii.gz"
    unknown = folder / ".case2.nii.gz.k3j4h5g6.tmp.nii.gz"
    live = folder / f".case3.nii.gz.{here}-{os.getpid()}-zzzz9999.tmp.nii.gz"
    keep = folder / "case.nii.gz"
    for path in (stale, elsewhere, unknown, live, keep):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(folder) == [stale]
    assert all(p.exists() for p in (elsewhere, unknown, live, keep))
    with atomic_path(folder / "new.nii.gz") as tmp:
        assert f".new.nii.gz.{here}-{os.getpid()}-" in tmp.name  # the host and pid that make the cleanup safe


@pytest.mark.slow
def test_promise_sigkill_during_infer_leaves_nothing_behind_after_resume(liver_bundle, tmp_path):
    """A hidden .<name>.<random>.tmp.nii.gz from a killed run is gone after the next run (with --resume)."""
    weights = tmp_path / "oracle.pt"
    torch.save(OracleNet().state_dict(), weights)
    phantom = liver_phantom(61, size="tiny")
    image = write_volume(label_image(phantom.label), phantom.affine, tmp_path / "in" / "case.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "import sys, time; sys.path.insert(0, 'tests'); import voxpipe.transforms.io as io\n"
        "real = io.os.replace\n"
        "def stall(*a): time.sleep(120)\n"
        "io.os.replace = stall\n"
        "from voxpipe.cli import main\n"
        f"main(['infer', {str(liver_bundle)!r}, {str(image)!r}, '-o', {str(out)!r}, '--weights', {str(weights)!r},"
        " '--no-statistics', '--set', 'network_def={\"_target_\": \"helpers.OracleNet\"}', '--set', 'patch_size=[32,32,16]',"
        " '--set', 'pixdim=[0.0,0.0,0.0]'])\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1])
    deadline = time.time() + 120
    while not list(out.glob(".*.tmp.nii.gz")) and time.time() < deadline:
        time.sleep(0.2)
    child.kill()
    child.wait()
    assert list(out.glob(".*.tmp.nii.gz")), "the child never reached the write"
    assert (
        main(
            [
                "infer",
                str(liver_bundle),
                str(image),
                "-o",
                str(out),
                "--weights",
                str(weights),
                "--resume",
                "--no-statistics",
                "--set",
                'network_def={"_target_": "helpers.OracleNet"}',
                "--set",
                "patch_size=[32,32,16]",
                "--set",
                "pixdim=[0.0,0.0,0.0]",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["case.nii.gz"]


# --- the culprit is named -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "truncated", "pickled_code", "other_network"])
def test_promise_a_broken_weights_file_is_named_not_the_config(liver_bundle, tmp_path, capsys, kind):
    phantom = liver_phantom(70, size="tiny")
    image = write_volume(label_image(phantom.label), phantom.affine, tmp_path / "case.nii.gz")
    weights = tmp_path / f"{kind}.pt"
    good = tmp_path / "good.pt"
    torch.save(OracleNet().state_dict(), good)
    if kind == "random":
        weights.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        weights.write_bytes(good.read_bytes()[:200])
    elif kind == "pickled_code":
        torch.save({"network": OracleNet()}, weights)  # a whole module object: needs unpickling code
    else:
        torch.save(torch.nn.Linear(3, 2).state_dict(), weights)
    args = [
        "infer",
        str(liver_bundle),
        str(image),
        "-o",
        str(tmp_path / "out"),
        "--weights",
        str(weights),
        "--set",
        'network_def={"_target_": "helpers.OracleNet"}',
        "--set",
        "patch_size=[32,32,16]",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "inference.yaml': UnpicklingError" not in err
    assert not (tmp_path / "out" / "case.nii.gz").exists()


def test_promise_resume_from_a_weights_only_last_pt_is_exit_2(
    liver_bundle, tiny_liver_dataset, tmp_path, capsys
):
    (tmp_path / "checkpoints").mkdir(parents=True)
    torch.save({"some": torch.zeros(1)}, tmp_path / "checkpoints" / "last.pt")
    args = [
        "train",
        str(liver_bundle),
        "--resume",
        "--set",
        f"dataset_dir={tiny_liver_dataset}",
        "--set",
        f"output_dir={tmp_path}",
        "--set",
        "max_epochs=1",
        "--set",
        "patch_size=[32,32,16]",
        "--set",
        "network_def#init_filters=8",
        "--set",
        "progress=False",
        "--set",
        "cache=none",
    ]
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "last.pt" in line and "expected a resumable checkpoint" in line
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"garbage")
    assert main(args) == 2
    assert "last.pt" in one_error_line(capsys.readouterr().err)


def test_promise_dicom_slices_are_named(tmp_path):
    from voxpipe.phantoms.dicom import write_dicom_series

    phantom = liver_phantom(5, orientation="LPS", size="tiny")
    write_dicom_series(label_image(phantom.label), phantom.affine, tmp_path / "series")
    files = sorted(p for p in (tmp_path / "series").rglob("*") if p.is_file())
    victim = Path(files[3])
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 500])  # truncated pixel data
    with pytest.raises(InputError, match=rf"{victim.name}'.*(pixel data|could not)"):
        load_volume(tmp_path / "series")
    victim.write_bytes(data)
    import pydicom

    other = pydicom.dcmread(files[5])
    other.Rows, other.Columns = 8, 8
    other.PixelData = np.zeros((8, 8), np.int16).tobytes()
    other.save_as(files[5])
    with pytest.raises(GeometryError, match=rf"different matrix sizes.*e.g. '.*{Path(files[5]).name}'"):
        load_volume(tmp_path / "series")


# --- datasets -----------------------------------------------------------------------------------


def test_promise_nnunet_v2_labels_are_read(tmp_path, capsys):
    nnunet = {"labels": {"background": 0, "liver": 1, "tumour": 2}, "channel_names": {"0": "CT"}}
    msd = {"labels": {"0": "background", "1": "liver", "2": "tumour"}}
    assert (
        dataset_label_values(nnunet)
        == dataset_label_values(msd)
        == {0: "background", 1: "liver", 2: "tumour"}
    )
    regions = {"labels": {"background": 0, "whole_tumour": [1, 2, 3], "core": [2, 3]}}
    assert dataset_label_groups(regions)["whole_tumour"] == (1, 2, 3)
    with pytest.raises(InputError, match="'whole_tumour' is region-based"):
        dataset_label_values(regions)
    with pytest.raises(InputError, match="labels entry 'liver'"):
        dataset_label_values({"labels": {"liver": "one"}})
    root = tmp_path / "ds"
    from voxpipe.phantoms.ct import write_msd_dataset

    write_msd_dataset(root, task="liver", n_train=2, n_test=0, seed=1, size="tiny")
    info = json.loads((root / "dataset.json").read_text())
    info["labels"] = nnunet["labels"]
    (root / "dataset.json").write_text(json.dumps(info))
    assert main(["data", "check", str(root), "--no-progress"]) == 0
    (root / "dataset.json").write_text(json.dumps({**info, "labels": regions["labels"]}))
    assert (
        main(
            [
                "evaluate",
                str(root / "labelsTr"),
                str(root / "labelsTr"),
                "--dataset",
                str(root / "dataset.json"),
                "-o",
                str(tmp_path / "ev"),
                "--no-surface",
            ]
        )
        == 0
    )
    assert "whole_tumour" in capsys.readouterr().out
