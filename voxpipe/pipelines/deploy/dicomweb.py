"""The node's DICOMweb mode: find new series by polling QIDO-RS, fetch them with WADO-RS, store results with STOW-RS.

dicomweb-client speaks the protocol; voxpipe decides what is new and when it is complete. A series
is new when the node has no job for it, and complete when two polls at least ``settle`` seconds
apart report the same number of instances (QIDO-RS has no "series complete" signal). Only series of
the bundle's modality are asked for, so the node's own SEG and SR are never fetched back.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

import pydicom

from voxpipe.pipelines.deploy.jobs import JobStore, is_uid
from voxpipe.runtime import optional_module

logger = logging.getLogger(__name__)

# DICOM JSON tags (PS3.18 F.2)
_STUDY, _SERIES, _COUNT, _SOP = "0020000D", "0020000E", "00201209", "00080018"


def _value(record: dict[str, Any], tag: str) -> Any:
    values = record.get(tag, {}).get("Value") or [None]
    return values[0]


def _file_bytes(ds: pydicom.Dataset) -> bytes:
    """A retrieved instance as a DICOM file (preamble, meta header, dataset)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class DicomwebPoller:
    """Poll a DICOMweb server for complete series of ``modality`` and fetch them into ``store``."""

    def __init__(
        self, url: str, store: JobStore, *, modality: str | None, settle: float, timeout: float = 60.0
    ) -> None:
        DICOMwebClient = optional_module(
            "dicomweb_client.api", extra="serve", feature="voxpipe serve --dicomweb"
        ).DICOMwebClient
        self.url = url.rstrip("/")
        self.client = DICOMwebClient(self.url, timeout=timeout)
        self.store = store
        self.modality = modality
        self.settle = settle
        self._seen: dict[
            str, tuple[int, float]
        ] = {}  # series UID → (instance count, when first seen with it)

    def poll(self) -> list[str]:
        """One QIDO-RS query; fetch the series that are new and complete. Their UIDs.

        A server that cannot be reached is logged and tried again at the next poll.
        """
        import requests

        try:
            filters = {"Modality": self.modality} if self.modality else {}
            found = self.client.search_for_series(
                search_filters=filters, fields=["NumberOfSeriesRelatedInstances"], get_remaining=True
            )
        except (requests.RequestException, OSError, ValueError) as error:
            logger.warning("%s: QIDO-RS query failed (%s); trying again at the next poll", self.url, error)
            return []
        fetched = []
        now = time.monotonic()
        for record in found:
            study, series, count = _value(record, _STUDY), _value(record, _SERIES), _value(record, _COUNT)
            if not (is_uid(study) and is_uid(series)) or self.store.get(series) is not None:
                continue
            previous = self._seen.get(series)
            if previous is None or previous[0] != count:
                self._seen[series] = (count, now)
                continue
            if now - previous[1] < self.settle:
                continue
            try:
                self._fetch(study, series)
            except (requests.RequestException, OSError, ValueError) as error:
                self.store.discard(series)  # a partial series must not be run: fetched whole at the next poll
                logger.warning(
                    "series %s: WADO-RS retrieve failed (%s); trying again at the next poll", series, error
                )
                continue
            self._seen.pop(series, None)
            fetched.append(series)
        return fetched

    def _fetch(self, study: str, series: str) -> None:
        stored = 0
        for ds in self.client.iter_series(study, series):
            sop = str(ds.get("SOPInstanceUID", ""))
            if not is_uid(sop) or str(ds.get("SeriesInstanceUID", "")) != series:
                logger.warning("series %s: an instance without a valid SOPInstanceUID was skipped", series)
                continue
            self.store.store_instance(
                _file_bytes(ds),
                series_uid=series,
                study_uid=study,
                sop_uid=sop,
                modality=str(ds.get("Modality", "")),
                calling_aet="DICOMweb",
            )
            stored += 1
        logger.info("series %s: %d instance(s) retrieved over WADO-RS", series, stored)
        if stored:
            self.store.update(
                series,
                state="queued",
                instances=self.store.instance_count(series),
                last_received=self.store.newest_received(series),
            )

    def stow(self, paths: list[Path]) -> list[str]:
        """STOW-RS the files; the SOP Instance UIDs the server stored.

        Raises:
            DeliveryError: the server could not be reached or refused an instance.
        """
        import requests

        from voxpipe.pipelines.deploy.node import DeliveryError

        datasets = [pydicom.dcmread(path) for path in paths]
        try:
            response = self.client.store_instances(datasets)
        except (requests.RequestException, OSError, ValueError) as error:
            raise DeliveryError(f"{self.url}: STOW-RS failed ({error})") from error
        stored = [str(item.ReferencedSOPInstanceUID) for item in response.get("ReferencedSOPSequence", [])]
        failed = [str(item.ReferencedSOPInstanceUID) for item in response.get("FailedSOPSequence", [])]
        if failed:
            raise DeliveryError(f"{self.url}: STOW-RS refused {', '.join(failed)}", acknowledged=stored)
        return stored
