"""Predict label maps for image files with a bundle's inference config.

The bundle does the work (MONAI preprocessing, :class:`voxpipe.pipelines.inference.sliding_window.FastSlidingWindowInferer`,
:class:`voxpipe.transforms.invert.ResampleArgmaxd` back to the source grid slab by slab,
:mod:`voxpipe.transforms.postprocess`, :class:`voxpipe.transforms.io.SaveLabelLiked`);
this module turns a user's inputs (files, folders of files, DICOM series folders) into the bundle's
``datalist``, checks the weights exist first, and gives batch behaviour:

* every input's header is read before the network runs; unreadable inputs are set aside;
* a case that fails while the bundle runs is recorded and the run continues with the next case;
* ``resume=True`` skips cases whose output already exists (outputs are written atomically, so an
  existing output is complete);
* failures are summarised at the end in one :class:`InferenceFailed` error (exit code 2) after all
  other cases were written; ``statistics.csv``/``.json`` (:mod:`voxpipe.pipelines.inference.stats`) cover the
  written cases.

Run options (precision, flip TTA, ``torch.compile``, the OpenVINO runtime, organ ROI, output format, float16 probabilities, progress
bars) are the inference config's own keys, set as overrides; a bundle without such a key gets a
clear error rather than a silently ignored option.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from voxpipe.errors import BundleError, InputError, OutputError
from voxpipe.pipelines.bundles.config import find_config, read_config
from voxpipe.pipelines.bundles.run import run_bundle
from voxpipe.pipelines.inference.cases import (
    CaseResult,
    InferenceFailed,
    case_name,
    check_shard,
    collect_inputs,
    first_path,
    is_complete,
    machine_problem,
)
from voxpipe.pipelines.inference.engine import InferenceEngine
from voxpipe.transforms.files import remove_stale_temporaries
from voxpipe.transforms.io import load_volume, read_geometry

logger = logging.getLogger(__name__)

# Label-map formats (single files, written atomically); "dicom-seg" writes <case>.dcm beside a .nii.gz.
OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd", "mha", "dicom-seg")


def _output_path(output_dir: Path, image: Path | tuple[Path, ...], output_format: str = "nii.gz") -> Path:
    return output_dir / f"{case_name(image)}.{'nii.gz' if output_format == 'dicom-seg' else output_format}"


def _seg_path(output_dir: Path, image: Path | tuple[Path, ...]) -> Path:
    return output_dir / f"{case_name(image)}.dcm"


def run_options(
    bundle_dir: str | os.PathLike[str],
    *,
    precision: str | None = None,
    tta: bool | None = None,
    compile: bool | None = None,
    runtime: str | None = None,
    organ_roi: bool | None = None,
    output_format: str = "nii.gz",
    probabilities_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Config overrides for the run options that were given (``None``: the bundle's own value).

    Raises:
        InputError: an unknown value, or the bundle's inference config has no key for an option
            (``progress`` excepted: without the key there are no progress bars).
    """
    from monai.bundle import ConfigParser

    from voxpipe.pipelines.inference.predictor import PRECISIONS

    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"format: expected one of {', '.join(OUTPUT_FORMATS)}, found {output_format!r}")
    if precision is not None and precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
    wanted: dict[str, Any] = {
        "precision": precision,
        "tta": tta,
        "compile": compile,
        "runtime": runtime,
        "organ_roi": organ_roi,
        "progress": progress,
        "output_ext": None if output_format in ("nii.gz", "dicom-seg") else f".{output_format}",
        "probabilities_dir": str(Path(probabilities_dir).resolve()) if probabilities_dir else None,
    }
    if device is not None:
        from voxpipe.runtime import DEVICE_NAMES, device_name

        try:
            device = device_name(device)
        except Exception:
            raise InputError(f"device: expected {DEVICE_NAMES}, found {device!r}") from None
    wanted["device#preference"] = device
    wanted = {k: v for k, v in wanted.items() if v is not None}
    config_file = find_config(bundle_dir, "inference")
    config = ConfigParser(read_config(config_file))
    if "progress" not in config:  # progress bars are cosmetic: a bundle without the key runs without them
        wanted.pop("progress", None)
    missing = [k for k in wanted if k not in config]
    if missing:
        raise InputError(
            f"{str(config_file)!r}: expected the keys {missing} for the options given, found none "
            "(voxpipe's bundles have them; a third-party bundle may not)",
            hint="leave these options out, or add the keys to the bundle's inference config",
        )
    return wanted


def infer_with_bundle(
    bundle_dir: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    output_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    statistics: bool = True,
    dicom_seg: bool = False,
    output_format: str = "nii.gz",
    precision: str | None = None,
    tta: bool | None = None,
    compile: bool | None = None,
    runtime: str | None = None,
    organ_roi: bool | None = None,
    save_probabilities: bool = False,
    progress: bool | None = None,
    device: str | None = None,
    safe: bool = False,
    shard: tuple[int, int] | None = None,
    timings: Any = None,
    engine: InferenceEngine | None = None,
) -> list[Path]:
    """Segment every input image; one ``<case id>.<format>`` per image on the image's exact grid.

    The bundle is built and its weights loaded once (:class:`~voxpipe.pipelines.inference.engine.InferenceEngine`);
    cases run one at a time, each succeeding or failing on its own.

    Args:
        bundle_dir: bundle folder with ``configs/inference.yaml``.
        inputs: image files, folders of image files, DICOM series folders.
        output_dir: where the label maps (and ``statistics.csv``/``.json``) are written.
        weights: network weights; default ``<bundle_dir>/models/model.pt``.
        overrides: further config overrides (e.g. ``{"patch_size": [64, 64, 32]}``).
        resume: skip inputs whose output exists and is readable.
        statistics: write per-case statistics of the written label maps.
        dicom_seg: for DICOM series inputs, also write ``<case id>.dcm``, a DICOM-SEG referencing
            the series (:func:`voxpipe.transforms.dicom_seg.write_dicom_seg`).
        output_format: label-map format (:data:`OUTPUT_FORMATS`); ``"dicom-seg"`` needs DICOM series
            inputs and writes ``<case id>.dcm`` for every input (the ``.nii.gz`` label map stays
            beside it: statistics and ``resume`` read it).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (default: the bundle's).
        tta: flip test-time augmentation (default: the bundle's, off in voxpipe's bundles).
        compile: ``torch.compile`` the network (default: the bundle's, off).
        runtime: what runs the windows on the CPU: ``"torch"``, ``"openvino"``, ``"openvino-int8"``
            (:mod:`voxpipe.pipelines.inference.runtimes`; default: the bundle's, torch).
        organ_roi: coarse-to-fine inference (the inferer's ``organ_roi``; default: the bundle's, off).
        save_probabilities: also write ``<case id>_probabilities.npz`` (float16 ``(C, X, Y, Z)`` on
            the source grid, with ``affine``).
        progress: progress bars over cases and windows (default: the bundle's, off).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (the config's ``device#preference``).
        safe: run the bundle in safe mode (known component kinds only, no code;
            :mod:`voxpipe.pipelines.bundles.safety`).
        shard: ``(k, n)``: run only the k-th of n shards (1 ≤ k ≤ n) of the inputs, every n-th case
            from the k-th on, in input order (:func:`parse_shard`).
            Shards write into one output folder; each merges the statistics of all shards finished so
            far, so the last one to finish leaves the complete ``statistics.csv``.
        timings: a :class:`voxpipe.pipelines.inference.timings.Timings` to fill with the seconds of
            each stage (load, resample, network, stitch, invert, post-process, write, statistics, ...).
        engine: an engine already built for this bundle, weights and options (``voxpipe serve`` keeps
            one warm); its writers are pointed at ``output_dir``. Default: one is built for this call.

    Returns:
        Paths of the label maps (written or, with ``resume``, already present), in input order.

    Raises:
        InputError: bad inputs or missing weights (before anything runs).
        InferenceFailed: some cases failed; every other case was written first.
    """
    images = collect_inputs(inputs, channels=bundle_channels(bundle_dir))
    if shard is not None:
        k, n = check_shard(shard)
        total = len(images)
        images = images[k - 1 :: n]
        logger.info("shard %d/%d: %d of %d cases", k, n, len(images), total)
        if not images:
            return []
    if output_format == "dicom-seg":
        dicom_seg = True
        not_dicom = [str(first_path(p)) for p in images if isinstance(p, tuple) or not p.is_dir()]
        if not_dicom:
            raise InputError(
                f"format 'dicom-seg': expected DICOM series folders, found image files {not_dicom}",
                hint="DICOM-SEG references the source slices; use --format nii.gz for these inputs",
            )
    out_dir = Path(output_dir)
    options = run_options(
        bundle_dir,
        precision=precision,
        tta=tta,
        compile=compile,
        runtime=runtime,
        organ_roi=organ_roi,
        output_format=output_format,
        probabilities_dir=out_dir if save_probabilities else None,
        progress=progress,
        device=device,
    )
    checkpoint = weights_path(bundle_dir, weights)
    failures: dict[str, str] = {}
    remove_stale_temporaries(out_dir)  # a killed run's half-written outputs, never under a final name

    def output(image: Path | tuple[Path, ...]) -> Path:
        return _output_path(out_dir, image, output_format)

    def finished(image: Path | tuple[Path, ...]) -> bool:
        is_series = isinstance(image, Path) and image.is_dir()
        return is_complete(output(image)) and not (
            dicom_seg and is_series and not _seg_path(out_dir, image).is_file()
        )

    done = [p for p in images if resume and finished(p)]
    if done:
        logger.info("resume: %d of %d cases already have outputs; skipped", len(done), len(images))
    pending = []
    for image in (p for p in images if p not in done):
        try:
            read_geometry(first_path(image))
        except InputError as error:
            failures[_key(image)] = str(error)
            logger.error("%s: skipped (%s)", image, error)
        else:
            pending.append(image)
    values = {
        "output_dir": str(out_dir.resolve()),
        "checkpoint": str(checkpoint.resolve()),
        **options,
        **(overrides or {}),
    }
    if pending:
        if engine is None:
            engine = InferenceEngine(
                bundle_dir,
                overrides=values,
                safe=safe,
                before_run=timings.instrument if timings is not None else None,
            )
        else:
            engine.set_output_dir(out_dir)
        results = list(engine.run(pending, item=lambda case: {"image": _datalist_image(case)}))
        for result in results:
            if not result.ok:
                failures[_key(result.case)] = result.reason
                logger.error("%s: inference failed (%s)", result.case, result.reason)
        _raise_setup_error(bundle_dir, results)
    outputs = [output(p) for p in images if _key(p) not in failures]
    missing = [str(p) for p in outputs if not p.is_file()]
    if missing:
        raise InputError(f"{str(bundle_dir)!r}: inference finished but wrote no output for {missing}")
    written = [p for p in images if _key(p) not in failures]
    unwritten_summaries = ""
    try:
        if statistics and outputs:  # timed like a stage, with the peak memory it raised
            write = (
                timings.timed("statistics", _write_statistics) if timings is not None else _write_statistics
            )
            write(bundle_dir, overrides or {}, written, out_dir, output, shard=shard)
        started = time.perf_counter()
        if dicom_seg:
            from voxpipe.transforms.dicom_seg import write_dicom_seg

            for image in (p for p in written if isinstance(p, Path) and p.is_dir() and p not in done):
                label = load_volume(output(image), label=True)
                write_dicom_seg(label.array, image, _seg_path(out_dir, image), names=label_names(bundle_dir))
            if timings is not None:
                timings.add("DICOM-SEG", time.perf_counter() - started)
    except Exception as error:
        machine = machine_problem(error)
        if machine is None or not failures:
            raise
        unwritten_summaries = (
            f"\n  statistics / DICOM-SEG not written: {machine}"  # the case list matters more
        )
    if failures:
        raise InferenceFailed.of(
            failures,
            total=len(images),
            outputs=outputs,
            where=f"were written to {str(out_dir)!r}",
            note=unwritten_summaries,
        )
    return outputs


def _raise_setup_error(bundle_dir: str | os.PathLike[str], results: Sequence[CaseResult]) -> None:
    """Every case failed with the same reason, and not because voxpipe refused an input file: the
    bundle or its settings are at fault (a patch the network cannot take, an override that breaks a
    transform), not the cases; raise that once, naming the config.

    Raises:
        BundleError: as above.
    """
    from voxpipe.pipelines.bundles.run import hint_for, innermost_error

    if not results or any(r.ok for r in results):
        return
    roots = [innermost_error(r.error) for r in results]
    if any(isinstance(root, (InputError, OutputError)) for root in roots):
        return
    if len({r.reason for r in results}) != 1 or machine_problem(results[0].error) is not None:
        return
    label = repr(str(find_config(bundle_dir, "inference")))
    raise BundleError(f"{label}: {results[0].reason}", hint=hint_for(results[0].reason)) from results[0].error


def weights_path(bundle_dir: str | os.PathLike[str], weights: str | os.PathLike[str] | None) -> Path:
    checkpoint = Path(weights) if weights is not None else Path(bundle_dir) / "models" / "model.pt"
    if not checkpoint.is_file():
        raise InputError(
            f"{str(checkpoint)!r}: expected network weights (the inference config's 'checkpoint'), found no file",
            hint="train the bundle first (voxpipe train) or pass --weights FILE",
        )
    return checkpoint


def check_inference_bundle(
    bundle_dir: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    safe: bool = False,
) -> None:
    """The checks :func:`infer_with_bundle` makes before its first case, without running one.

    The weights file exists, the overrides apply, and (``safe``) the configuration as it will run
    passes safe mode. For callers that run the bundle later, case by case (``voxpipe serve``).

    Raises:
        InputError: missing weights.
        BundleError: the configuration is refused (safe mode, a bad override).
    """
    checkpoint = weights_path(bundle_dir, weights)
    values = {"checkpoint": str(checkpoint.resolve()), **(overrides or {}), "datalist": []}
    run_bundle(bundle_dir, config="inference", overrides=values, safe=safe, check_only=True)


def label_names(bundle_dir: str | os.PathLike[str]) -> dict[int, str]:
    """Label value → name from the bundle's metadata (``outputs.pred.channel_def``)."""
    import json

    metadata = json.loads((Path(bundle_dir) / "configs" / "metadata.json").read_text())
    channels = (
        metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def", {})
    )
    return {int(k): str(v) for k, v in channels.items() if int(k)} or {1: "foreground"}


def _key(case: Path | tuple[Path, ...]) -> str:
    """How a case is named in failure lists: its path (the first channel file for one file per channel)."""
    return str(first_path(case))


def _datalist_image(case: Path | tuple[Path, ...]) -> str | list[str]:
    return [str(p.resolve()) for p in case] if isinstance(case, tuple) else str(case.resolve())


def bundle_channels(bundle_dir: str | os.PathLike[str]) -> int:
    """Input channels of a bundle's network, from ``metadata.json`` (``inputs.image.num_channels``; default 1)."""
    import json

    try:
        metadata = json.loads((Path(bundle_dir) / "configs" / "metadata.json").read_text())
        return int(metadata["network_data_format"]["inputs"]["image"].get("num_channels", 1)) or 1
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 1


def _write_statistics(
    bundle_dir: str | os.PathLike[str],
    overrides: Mapping[str, Any],
    images: list[Any],
    out_dir: Path,
    output: Any,
    *,
    shard: tuple[int, int] | None = None,
) -> None:
    """Per-case statistics from the written label maps and their source images."""

    from voxpipe.pipelines.inference.stats import case_statistics, write_shard_statistics, write_statistics

    config = read_config(find_config(bundle_dir, "inference"))
    lesion_labels = overrides.get("lesion_labels", config.get("lesion_labels", []))
    names = label_names(bundle_dir)
    per_case = {}
    for image in images:
        label = load_volume(output(image))

        def intensity(image: Any = image, shape: tuple[int, ...] = label.array.shape) -> Any:
            source = load_volume(first_path(image), channels=True)  # a multi-channel image: channel 0
            array = source.array[0] if source.array.ndim == 4 else source.array
            return array if array.shape == shape else None

        per_case[case_name(image)] = case_statistics(
            label.array, label.affine, names=names, image=intensity, lesion_labels=lesion_labels
        )
    if shard is None:
        write_statistics(per_case, out_dir)
    else:
        write_shard_statistics(per_case, out_dir, shard)
