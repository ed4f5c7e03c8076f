"""`voxpipe serve` next to a PACS: time from the last instance received to the DICOM-SEG stored in the PACS.

A 512 × 512 × 134 CT series (0.98 × 0.98 × 3 mm, NSCLC-like geometry; an upsampled liver phantom,
int16, uncompressed) is stored in a real Orthanc (Debian `orthanc`; the script stops without it).
Orthanc C-STOREs it to a voxpipe node
running the liver bundle in safe mode; the node's results go back to Orthanc. Printed:

* transfer: Orthanc → node, the whole series (DIMSE, localhost);
* idle: the node's ``--idle`` wait (when a series counts as complete);
* inference: the bundle's inference, statistics, DICOM-SEG and SR writing (the job's own clock);
* last instance → SEG in PACS: the figure the issue asks for (node's job record vs the time the SEG
  appeared in Orthanc's REST API, polled every 50 ms), and the same without the idle wait.

    python benchmarks/serve_latency.py [--weights runs/demo/run/models/model_final.pt --init-filters 8]
                                       [--slices 134] [--idle 2]

Without ``--weights`` the network is a seeded random init of the bundle's SegResNet (16 filters);
time barely depends on the weights, but the SEG of a random network is noise. The script imports
tests/helpers.py for its Orthanc launcher (the tests use the same one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "configs" / "liver_ct_segresnet"
sys.path.insert(0, str(ROOT / "tests"))


def ct_series(folder: Path, slices: int) -> list[Path]:
    from voxpipe.phantoms.ct import liver_phantom
    from voxpipe.phantoms.dicom import write_dicom_series

    phantom = liver_phantom(0, orientation="LPS", size="default")
    zoom = np.array((512, 512, slices)) / np.array(phantom.image.shape)
    hu = ndimage.zoom(phantom.image.astype(np.int16), zoom, order=0)
    affine = np.diag([-0.977, -0.977, 3.0, 1.0])
    affine[:3, 3] = (250.0, 250.0, -400.0)
    return write_dicom_series(hu, affine, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", help="trained checkpoint of the liver bundle (default: seeded random init)"
    )
    parser.add_argument("--init-filters", type=int, default=16)
    parser.add_argument("--slices", type=int, default=134)
    parser.add_argument("--idle", type=float, default=2.0, help="the node's --idle (seconds)")
    args = parser.parse_args()

    from helpers import OrthancServer, free_port, orthanc_binary

    from voxpipe.pipelines.deploy.node import DicomNode

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        files = ct_series(folder / "series", args.slices)
        size = sum(p.stat().st_size for p in files) / 2**20
        print(
            f"series: 512 x 512 x {args.slices} CT, {len(files)} files, {size:.0f} MiB uncompressed "
            f"(written in {time.perf_counter() - started:.1f} s)"
        )
        weights = args.weights
        if weights is None:
            from voxpipe.networks import build_network

            torch.manual_seed(0)
            weights = str(folder / "random.pt")
            torch.save(
                build_network(
                    "segresnet", in_channels=1, out_channels=3, init_filters=args.init_filters
                ).state_dict(),
                weights,
            )
        node_port = free_port()
        if orthanc_binary() is None:
            sys.exit(
                "Orthanc is not installed (apt-get install orthanc): this benchmark measures against a real PACS"
            )
        pacs = OrthancServer(folder / "orthanc", modalities={"voxpipe": ("VOXPIPE", node_port)})
        try:
            pacs.upload(files)
            [ct] = pacs.series("CT")
            node = DicomNode(
                BUNDLE,
                workdir=folder / "node",
                port=node_port,
                send_to=f"ORTHANC@127.0.0.1:{pacs.dicom_port}",
                idle=args.idle,
                weights=weights,
                overrides={"network_def#init_filters": args.init_filters, "progress": False},
            )
            node.start()
            try:
                sent = time.perf_counter()
                pacs.send(ct["ID"], "voxpipe")
                transfer = time.perf_counter() - sent
                while not pacs.series("SEG"):
                    time.sleep(0.05)
                seg_seen = datetime.now(timezone.utc)
                while not node.store.jobs() or node.store.jobs()[0]["state"] != "done":
                    time.sleep(0.05)
            finally:
                node.stop()
            [job] = node.store.jobs()
        finally:
            pacs.stop()
        last = datetime.fromisoformat(job["last_received"])
        latency = (seg_seen - last).total_seconds()
        print(f"transfer Orthanc -> node: {transfer:6.1f} s ({len(files) / transfer:.0f} instances/s)")
        print(f"idle wait:                {args.idle:6.1f} s")
        print(
            f"inference + SEG + SR:     {job['inference_seconds']:6.1f} s  (weights: {args.weights or 'random init'})"
        )
        print(
            f"last instance -> SEG in PACS: {latency:.1f} s ({latency - args.idle:.1f} s without the idle wait); "
            f"state {job['state']}, {len(job['sent'])} objects sent"
        )


if __name__ == "__main__":
    main()
