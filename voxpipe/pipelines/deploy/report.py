"""The measurement report the node sends with each DICOM-SEG: a DICOM SR (TID 1500) built by highdicom.

One volumetric measurement group per segment of the SEG (TID 1411), referencing that segment and
the source series, with the structure's volume (mL) and, for a CT series, its mean CT number (HU:
DCM ``Attenuation Coefficient``, derivation SNOMED ``Mean``, UCUM ``[hnsf'U]``); lesion classes add
the number of lesions and the largest lesion's largest 3D diameter (mm). The figures are the ones ``statistics.json`` holds for the
case (:mod:`voxpipe.pipelines.inference.stats`), so the SR and the CSV cannot disagree.

highdicom builds and validates the SR; voxpipe only chooses the codes: SNOMED CT ``Volume`` and
``Diameter`` (derivation ``Maximum``), UCUM ``ml`` / ``mm``, and NCIt ``Count`` for the lesion count
(DCM has no concept for it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pydicom

from voxpipe.runtime import optional_module


def write_measurement_report(
    seg_path: str | os.PathLike[str],
    source_headers: Sequence[pydicom.Dataset],
    statistics: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
) -> Path:
    """Write a Comprehensive 3D SR measurement report for the SEG at ``seg_path``.

    Args:
        seg_path: the DICOM-SEG the report refers to (its segments are the measured regions).
        source_headers: headers of the source series' instances (evidence beside the SEG, which comes
            first: highdicom takes the patient and study attributes from it).
        statistics: ``{structure name: {"volume_ml", ["mean"], ["lesion_count", "largest_lesion_diameter_mm"]}}``
            for one case, keyed by the SEG's segment labels.
        path: the SR file to write (atomically).
        sop_instance_uid, series_instance_uid: the SR's own UIDs.
    """
    hd = optional_module("highdicom", extra="dicom", feature="writing the DICOM SR report")
    from pydicom.sr.codedict import codes

    from voxpipe import __version__
    from voxpipe.transforms.files import atomic_path

    seg = pydicom.dcmread(seg_path)
    millilitre = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
    millimetre = codes.UCUM.Millimeter
    count = hd.sr.CodedConcept("C25463", "NCIt", "Count")
    lesions = hd.sr.CodedConcept("{lesions}", "UCUM", "lesions")
    algorithm = hd.sr.AlgorithmIdentification(name="voxpipe", version=__version__)
    attenuation = hd.sr.CodedConcept("112031", "DCM", "Attenuation Coefficient")
    hu = hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
    hounsfield = all(str(getattr(h, "Modality", "")) == "CT" for h in source_headers) and bool(source_headers)
    groups = []
    for segment in seg.SegmentSequence:
        name = str(segment.SegmentLabel)
        figures = statistics.get(name)
        if figures is None:
            continue
        measurements = [
            hd.sr.Measurement(
                name=codes.SCT.Volume,
                value=float(figures["volume_ml"]),
                unit=millilitre,
                algorithm_id=algorithm,
            )
        ]
        if figures.get("mean") is not None and hounsfield:
            measurements.append(  # the mean CT number over the structure (dcmqi's coding of it)
                hd.sr.Measurement(
                    name=attenuation,
                    value=float(figures["mean"]),
                    unit=hu,
                    derivation=codes.SCT.Mean,
                    algorithm_id=algorithm,
                )
            )
        if "lesion_count" in figures:
            measurements.append(
                hd.sr.Measurement(
                    name=count, value=float(figures["lesion_count"]), unit=lesions, algorithm_id=algorithm
                )
            )
            measurements.append(
                hd.sr.Measurement(
                    name=codes.SCT.Diameter,
                    value=float(figures.get("largest_lesion_diameter_mm", 0.0)),
                    unit=millimetre,
                    derivation=codes.SCT.Maximum,
                    algorithm_id=algorithm,
                )
            )
        kind = segment.SegmentedPropertyTypeCodeSequence[0]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"segment {segment.SegmentNumber}: {name}"
                ),
                referenced_segment=_referenced_segment(hd, seg, int(segment.SegmentNumber)),
                finding_type=hd.sr.CodedConcept(
                    kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning
                ),
                measurements=measurements,
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="voxpipe"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *source_headers],
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=901,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer="voxpipe",
        is_complete=True,
        series_description="voxpipe measurements",
    )
    with atomic_path(path) as tmp:
        sr.save_as(tmp)
    return Path(path)


def write_seg_and_report(
    label: Any,
    series: Path,
    out: Path,
    names: Mapping[int, str],
    statistics: Mapping[str, Any],
    uids: Mapping[str, str],
    *,
    only_found: bool,
) -> dict[str, Path]:
    """``out/seg.dcm`` (the DICOM-SEG of ``label`` on the series' grid) and ``out/sr.dcm`` (this
    module's report on it), with the given UIDs (``seg``, ``seg-series``, ``sr``, ``sr-series``);
    ``only_found``: segments for the structures found only. Their paths, by kind."""
    import numpy as np

    from voxpipe.transforms.dicom import discover_series
    from voxpipe.transforms.dicom_seg import write_dicom_seg

    seg_path, sr_path = out / "seg.dcm", out / "sr.dcm"
    present = {int(v) for v in np.unique(label) if v}
    write_dicom_seg(
        label,
        series,
        seg_path,
        names={v: names[v] for v in present} if only_found else dict(names),
        sop_instance_uid=uids["seg"],
        seg_series_uid=uids["seg-series"],
    )
    write_measurement_report(
        seg_path,
        discover_series(series)[0].headers,
        statistics,
        sr_path,
        sop_instance_uid=uids["sr"],
        series_instance_uid=uids["sr-series"],
    )
    return {"seg": seg_path, "sr": sr_path}


def _referenced_segment(hd: Any, seg: Any, number: int) -> Any:
    """The SR's reference to one segment of the SEG. A segment with no voxels (no tumour found) has no
    frames, and highdicom's ``from_segmentation`` refuses it: it is then referenced with the source
    series instead of frames, and its measurements (volume 0) still go into the report."""
    try:
        return hd.sr.ReferencedSegment.from_segmentation(seg, number)
    except ValueError:
        frames = [
            item
            for item in seg.PerFrameFunctionalGroupsSequence
            if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == number
        ]
        if frames:
            raise
        return hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(
                seg.ReferencedSeriesSequence[0].SeriesInstanceUID
            ),
        )


def read_report_volumes(path: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """``{tracking identifier: {concept meaning: value}}`` from an SR written by :func:`write_measurement_report`.

    What a PACS-side check (or a test) reads back: the measurements per group, by their concept names.
    """
    hd = optional_module("highdicom", extra="dicom", feature="writing the DICOM SR report")

    sr = hd.sr.srread(path)
    out: dict[str, dict[str, float]] = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        values = {}
        for measurement in group.get_measurements():
            meaning = measurement.name.meaning
            if measurement.derivation is not None:
                meaning = f"{measurement.derivation.meaning} {meaning}"
            values[meaning] = float(measurement.value)
        out[str(group.tracking_identifier)] = values
    return out
