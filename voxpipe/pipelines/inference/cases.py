"""The case loop of every inference path: inputs gathered into cases, each case run on its own, one summary.

What ``voxpipe infer`` (MONAI bundles and nnU-Net folders), ``voxpipe detect`` and ``voxpipe annotate
prelabel`` share:

* :func:`collect_inputs`: image files, folders of them, DICOM series folders and nnU-Net's channel
  files gathered into cases, with a case id each (:func:`case_name`); colliding ids refused;
* :func:`run_cases`: the next case is read while this one runs (a prefetch thread), each case
  succeeds or fails on its own with a one-line reason, and a full disk or a read-only output stops
  the loop (:func:`machine_problem`);
* :meth:`InferenceFailed.of`: the one "N of M cases failed" summary, raised after every other case was
  written (exit code 2);
* shards (:func:`parse_shard`) and resume (:func:`is_complete`).

Why our own: MONAI's evaluator and ``ThreadDataLoader`` end the whole run at the first failing case.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxpipe.errors import InputError, OutputError, VoxpipeError
from voxpipe.transforms.io import VOLUME_SUFFIXES, case_id, find_volumes, read_geometry, volume_suffix

# What the bundles' LoadVolumed reads (nibabel for NIfTI, SimpleITK for the rest); a folder without
# such files is read as a DICOM series.
INFER_SUFFIXES = VOLUME_SUFFIXES


def case_name(case: Path | tuple[Path, ...]) -> str:
    """The case id of an input: its file or folder name, or for one file per channel (nnU-Net's
    ``case_0000.nii.gz``, ``case_0001.nii.gz``...) the name without the channel suffix."""
    if isinstance(case, tuple):
        return re.sub(r"_\d{4}$", "", case_id(case[0]))
    return case_id(case)


def first_path(case: Path | tuple[Path, ...]) -> Path:
    return case[0] if isinstance(case, tuple) else case


def _group_channels(files: list[Path], channels: int) -> list[Path | tuple[Path, ...]]:
    """nnU-Net-style channel files of a folder (``<case>_0000`` ... ``_<channels - 1>``) as one case each."""
    groups: dict[str, dict[int, Path]] = {}
    for file in files:
        match = re.match(r"^(.+)_(\d{4})$", case_id(file))
        if not match:
            raise InputError(
                f"{str(file)!r}: expected one file per channel named <case>_0000 ... _{channels - 1:04d} "
                f"(the bundle takes {channels} channels) or a 4D image, found a file without a channel suffix"
            )
        groups.setdefault(match.group(1), {})[int(match.group(2))] = file
    cases: list[Path | tuple[Path, ...]] = []
    for name, found in sorted(groups.items()):
        if sorted(found) != list(range(channels)):
            raise InputError(
                f"{str(found[min(found)])!r}: case {name!r}: expected channels {list(range(channels))}, found {sorted(found)}"
            )
        cases.append(tuple(found[c] for c in range(channels)))
    return cases


def collect_inputs(
    inputs: Sequence[str | os.PathLike[str] | Sequence[str | os.PathLike[str]]], *, channels: int = 1
) -> list[Path | tuple[Path, ...]]:
    """Image files from a mix of files and folders (a folder contributes the images directly in it;
    a folder holding no image files but DICOM slices is one input, a DICOM series).

    For a bundle that takes several ``channels``, an input is a 4D image, a list of channel files
    (one case), or a folder whose 3D files are grouped by nnU-Net's channel suffix (``case_0000``...);
    a folder of 4D images gives one case per file.

    Raises:
        InputError: a path does not exist, is not an image, a folder holds no images, two inputs share
            a case id (their outputs would overwrite each other), or nothing was given.
    """
    images: list[Path | tuple[Path, ...]] = []
    for item in inputs:
        if isinstance(item, (list, tuple)):
            files = tuple(Path(f) for f in item)
            missing = [str(f) for f in files if not f.is_file()]
            if missing or len(files) != channels:
                raise InputError(
                    f"{str(files[0]) if files else '[]'!r}: expected {channels} existing channel files for one case, "
                    f"found {len(files)}" + (f" ({missing[0]!r} missing)" if missing else "")
                )
            images.append(files)
            continue
        path = Path(item)
        if path.is_dir():
            found = [p for p in find_volumes(path) if volume_suffix(p) in INFER_SUFFIXES]
            if found and channels > 1 and all(_is_3d(p) for p in found):
                images.extend(_group_channels(found, channels))
                continue
            if not found:
                from voxpipe.transforms.dicom import discover_series

                try:
                    discover_series(path)
                except InputError:
                    raise InputError(
                        f"{str(path)!r}: expected image files ({', '.join(INFER_SUFFIXES)}) or DICOM slices in this folder, found neither"
                    ) from None
                found = [path]
            images.extend(found)
        elif path.is_file():
            if volume_suffix(path) not in INFER_SUFFIXES:
                raise InputError(
                    f"{str(path)!r}: expected an image file ({', '.join(INFER_SUFFIXES)}), found {volume_suffix(path) or path.suffix!r}",
                    hint="convert other formats with `voxpipe data convert`",
                )
            images.append(path)
        else:
            raise InputError(f"{str(path)!r}: expected an image file or folder, found nothing at that path")
    if not images:
        raise InputError("inputs: expected at least one image file or folder, found none")
    seen: dict[str, Path | tuple[Path, ...]] = {}
    for image in images:
        if case_name(image) in seen:
            raise InputError(
                f"{str(first_path(image))!r}: same case id {case_name(image)!r} as {str(first_path(seen[case_name(image)]))!r}; "
                "outputs would collide"
            )
        seen[case_name(image)] = image
    return images


def _is_3d(path: Path) -> bool:
    """Whether an image file holds one channel (a 4D NIfTI holds several)."""
    if volume_suffix(path) not in (".nii", ".nii.gz"):
        return True
    import nibabel as nib

    return len(nib.load(str(path)).shape) == 3


class InferenceFailed(InputError):
    """Some cases failed; the others were written. ``failures`` maps input path → reason."""

    def __init__(self, message: str, *, outputs: list[Path], failures: dict[str, str]) -> None:
        super().__init__(message)
        self.outputs = outputs
        self.failures = failures

    @classmethod
    def of(
        cls,
        failures: Mapping[str, str],
        *,
        total: int,
        outputs: list[Path],
        where: str,
        note: str = "",
        noun: str = "cases",
    ) -> InferenceFailed:
        """The one summary of a batch: ``N of M cases failed (the other K ... where)``, then a line per
        failed case with its reason (and ``note``, e.g. what could not be written after them)."""
        listing = "\n  ".join(f"{path}: {reason}" for path, reason in failures.items()) + note
        return cls(
            f"{len(failures)} of {total} {noun} failed (the other {len(outputs)} {where}):\n  {listing}",
            outputs=outputs,
            failures=dict(failures),
        )


def require_series(cases: Sequence[Any]) -> None:
    """``--dicom-seg`` needs DICOM series folders (a DICOM-SEG references the source slices).

    Raises:
        InputError: naming the inputs that are image files.
    """
    files = [str(first_path(c)) for c in cases if not (isinstance(c, Path) and c.is_dir())]
    if files:
        raise InputError(
            f"--dicom-seg: expected DICOM series folders, found image files {files}",
            hint="a DICOM-SEG references the source slices; leave out --dicom-seg for these inputs",
        )


def is_complete(path: Path) -> bool:
    """Whether an output file is there and readable (outputs are written atomically: then complete)."""
    try:
        read_geometry(path)
    except InputError:
        return False
    return True


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (1 ≤ K ≤ N) → ``(K, N)``.

    Raises:
        InputError: not of that form.
    """
    k, _, n = str(text).partition("/")
    if not (k.strip().isdigit() and n.strip().isdigit()):
        raise InputError(f"--shard: expected K/N with 1 <= K <= N (e.g. 2/8), found {text!r}")
    return check_shard((int(k), int(n)))


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    k, n = (int(v) for v in shard)
    if not 1 <= k <= n:
        raise InputError(f"--shard: expected K/N with 1 <= K <= N (e.g. 2/8), found {k}/{n}")
    return k, n


@dataclass
class CaseResult:
    """What became of one case: ``error`` is None when it was written."""

    case: Any
    seconds: float
    error: BaseException | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def machine_problem(error: BaseException) -> str | None:
    """The reason when ``error`` (or its cause) is the machine's: a full disk or quota, a read-only output."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return f"{current.strerror or current} ({current.filename or 'output folder'})"
        if isinstance(current, OutputError) and current.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return str(current)
        current = current.__cause__ or current.__context__
    return None


def _reason(error: BaseException) -> str:
    """One line: voxpipe's own message (it names the file), else the innermost cause with its type."""
    from voxpipe.pipelines.bundles.run import innermost_error

    root = innermost_error(error)
    if isinstance(root, VoxpipeError):
        return str(root).splitlines()[0]
    return f"{type(root).__name__}: {' '.join(str(root).split())[:400]}"


def run_cases(
    cases: Sequence[Any],
    *,
    prepare: Callable[[Any], Any],
    execute: Callable[[Any], None],
    prefetch: bool = True,
) -> Iterator[CaseResult]:
    """The engine's case loop: ``prepare(case)`` (loading, resampling) for the next case runs in a thread
    while ``execute(prepared)`` (network, stitching, writing) runs for this one; yields a
    :class:`CaseResult` per case, in order.

    Each case succeeds or fails on its own, with its reason; a full disk or a read-only output stops the
    loop (that case and every later one yield the machine's reason). Used by :class:`InferenceEngine`
    (segmentation bundles), by nnU-Net folders
    (:func:`voxpipe.pipelines.inference.nnunet.run.infer_with_nnunet`) and by
    :func:`voxpipe.pipelines.inference.detect.run_detection`.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxpipe-prefetch") if prefetch else None
    try:
        pending: Future | None = None
        if pool is not None and cases:
            pending = pool.submit(prepare, cases[0])
        stopped: str | None = None
        for index, case in enumerate(cases):
            started = time.perf_counter()
            if stopped is not None:
                yield CaseResult(case, 0.0, OutputError(stopped), f"not run ({stopped})")
                continue
            try:
                future, pending = pending, None
                prepared = future.result() if future is not None else prepare(case)
                if pool is not None and index + 1 < len(cases):
                    pending = pool.submit(prepare, cases[index + 1])
                execute(prepared)
            except Exception as error:  # one case's failure must not cost the others
                if pool is not None and pending is None and index + 1 < len(cases):
                    pending = pool.submit(prepare, cases[index + 1])
                stopped = machine_problem(error)
                reason = stopped or _reason(error)
                yield CaseResult(case, time.perf_counter() - started, error, reason)
                continue
            yield CaseResult(case, time.perf_counter() - started)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


__all__ = [
    "INFER_SUFFIXES",
    "CaseResult",
    "InferenceFailed",
    "case_name",
    "check_shard",
    "collect_inputs",
    "first_path",
    "is_complete",
    "machine_problem",
    "parse_shard",
    "require_series",
    "run_cases",
]
