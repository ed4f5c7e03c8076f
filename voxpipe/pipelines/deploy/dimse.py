"""Sending results to a DICOM peer over DIMSE (C-STORE with pynetdicom): the destination
``AET@HOST:PORT`` and what the peer acknowledged; split out of :mod:`.node`, which imports it.

Why our own: pynetdicom gives associations and C-STORE; what a node needs on top is the strict
destination syntax and which instances the peer stored before a failure (so they are not sent twice).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from voxpipe.errors import InputError, OutputError

SUCCESS = 0x0000  # C-STORE status (PS3.4 B.2.3)


@dataclass(frozen=True)
class Destination:
    """A DICOM peer to send results to: ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AET@HOST:PORT`` → :class:`Destination`.

    Raises:
        InputError: not of that form (AE titles: 1–16 characters, no backslash or control characters).
    """
    match = re.fullmatch(r"([^@\\\x00-\x1f]{1,16})@(\[[0-9a-fA-F:]+\]|[^:@\s]+):(\d{1,5})", text.strip())
    if not match or not match.group(1).strip() or not 0 < int(match.group(3)) < 65536:
        raise InputError(f"--send-to: expected AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242), found {text!r}")
    return Destination(match.group(1).strip(), match.group(2).strip("[]"), int(match.group(3)))


class DeliveryError(OutputError):
    """The destination could not be reached or refused an instance; the results are kept and sent again later.

    ``acknowledged``: the SOP Instance UIDs the destination did store before the failure.
    """

    def __init__(self, message: str, *, acknowledged: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.acknowledged = list(acknowledged)


def send_dimse(
    paths: Sequence[Path], destination: Destination, *, calling_aet: str, timeout: float = 30.0
) -> list[str]:
    """C-STORE each file to ``destination``; the SOP Instance UIDs it acknowledged with Success.

    Raises:
        DeliveryError: no association (peer down, AE title refused); instances refused with a
            failure status are named (the ones acknowledged before are in ``error.acknowledged``).
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    datasets = [pydicom.dcmread(path) for path in paths]
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    association = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not association.is_established:
        raise DeliveryError(
            f"{destination}: could not open an association (peer down, or it refused AE title {calling_aet!r})"
        )
    acknowledged: list[str] = []
    refused: list[str] = []
    try:
        for ds in datasets:
            status = association.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code == SUCCESS or (
                code is not None and 0xB000 <= code <= 0xBFFF
            ):  # warnings store the instance too
                acknowledged.append(str(ds.SOPInstanceUID))
            else:
                refused.append(
                    f"{ds.SOPInstanceUID} ({'no answer' if code is None else f'status 0x{code:04X}'})"
                )
    finally:
        association.release()
    if refused:
        raise DeliveryError(f"{destination}: refused {', '.join(refused)}", acknowledged=acknowledged)
    return acknowledged


__all__ = ["DeliveryError", "Destination", "parse_destination", "send_dimse"]
