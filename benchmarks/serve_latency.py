"""`voxpipe serve` next to a PACS: time from the last instance received to the DICOM-SEG stored in the PACS.

A 512 × 512 × 134 CT series (0.98 × 0.98 × 3 mm, NSCLC-like geometry; an upsampled liver phantom,
int16, uncompressed) is stored in a real Orthanc (Debian `orthanc`; the script stops without it).
Orthanc C-STOREs it to a voxpipe node
running the liver bundle in safe mode; the node's results go back to Orthanc. Printed:

* transfer: Orthanc → node, the whole series (DIMSE, localhost);
* idle: the node's ``--idle`` wait (when a series counts as complete);
* inference: the bundle's inference, statistics, DICOM-SEG and SR writing (the job's own clock);
* last instance → SEG and SR in the PACS: per series, from the newest stored instance to the PACS's
  acknowledgement of the results (the node's job record, ``seconds_from_last_instance``).

    python benchmarks/serve_latency.py [--weights runs/demo/run/models/model_final.pt --init-filters 8]
                                       [--slices 134] [--matrix 512] [--idle 2]
                                       [--studies 20] [--workers 2]

With ``--studies N`` the N series are sent back to back (Orthanc C-STOREs one after the other) and
the script prints p50/p95 of the latency from each series' last instance to the moment the PACS
acknowledged its SEG and SR (the node's job record), and series per hour.

Without ``--weights`` the network is a seeded random init of the bundle's SegResNet (16 filters);
time barely depends on the weights, but the SEG of a random network is noise. The script imports
tests/helpers.py for its Orthanc launcher (the tests use the same one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "configs" / "liver_ct_segresnet"
sys.path.insert(0, str(ROOT / "tests"))


def ct_series(folder: Path, slices: int, matrix: int, *, seed: int = 0) -> list[Path]:
    from voxpipe.phantoms.ct import liver_phantom
    from voxpipe.phantoms.dicom import write_dicom_series

    phantom = liver_phantom(seed, orientation="LPS", size="default")
    zoom = np.array((matrix, matrix, slices)) / np.array(phantom.image.shape)
    hu = ndimage.zoom(phantom.image.astype(np.int16), zoom, order=0)
    pixel = 0.977 * 512 / matrix
    affine = np.diag([-pixel, -pixel, 3.0, 1.0])
    affine[:3, 3] = (250.0, 250.0, -400.0)
    return write_dicom_series(hu, affine, folder, seed=seed)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", help="trained checkpoint of the liver bundle (default: seeded random init)"
    )
    parser.add_argument("--init-filters", type=int, default=16)
    parser.add_argument("--slices", type=int, default=134)
    parser.add_argument(
        "--matrix", type=int, default=512, help="in-plane pixels of each series (default 512)"
    )
    parser.add_argument("--studies", type=int, default=1, help="series sent back to back (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="the node's --workers (default 1)")
    parser.add_argument("--idle", type=float, default=2.0, help="the node's --idle (seconds)")
    args = parser.parse_args()

    from helpers import OrthancServer, free_port, orthanc_binary

    from voxpipe.pipelines.deploy.node import DicomNode
    from voxpipe.pipelines.inference.engine import InferenceEngine

    built: list[InferenceEngine] = []  # every engine the node builds (its models loaded)
    construct = InferenceEngine.__init__

    def counting(self: InferenceEngine, *args: object, **kwargs: object) -> None:
        construct(self, *args, **kwargs)
        built.append(self)

    InferenceEngine.__init__ = counting  # type: ignore[method-assign]

    if orthanc_binary() is None:
        sys.exit(
            "Orthanc is not installed (apt-get install orthanc): this benchmark measures against a real PACS"
        )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        studies = [
            ct_series(folder / f"series{k}", args.slices, args.matrix, seed=k % 4)
            for k in range(args.studies)
        ]
        size = sum(p.stat().st_size for files in studies for p in files) / 2**20
        print(
            f"{args.studies} series of {args.matrix} x {args.matrix} x {args.slices} CT, "
            f"{sum(map(len, studies))} files, {size:.0f} MiB uncompressed (written in {time.perf_counter() - started:.1f} s)"
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
        pacs = OrthancServer(folder / "orthanc", modalities={"voxpipe": ("VOXPIPE", node_port)})
        try:
            for files in studies:
                pacs.upload(files)
            cts = pacs.series("CT")
            builds = len(built)
            loading = time.perf_counter()
            node = DicomNode(
                BUNDLE,
                workdir=folder / "node",
                port=node_port,
                send_to=f"ORTHANC@127.0.0.1:{pacs.dicom_port}",
                idle=args.idle,
                weights=weights,
                overrides={"network_def#init_filters": args.init_filters, "progress": False},
                workers=args.workers,
            )
            loading = time.perf_counter() - loading
            node.start()
            try:
                first_sent = time.perf_counter()
                for ct in cts:  # back to back, as a scanner's worklist would
                    pacs.send(ct["ID"], "voxpipe")
                transfer = time.perf_counter() - first_sent
                while len(node.store.jobs()) < len(cts) or not all(
                    j["state"] in ("done", "failed") for j in node.store.jobs()
                ):
                    time.sleep(0.2)
                elapsed = time.perf_counter() - first_sent
            finally:
                node.stop()
            jobs = node.store.jobs()
            segs = pacs.series("SEG")
        finally:
            pacs.stop()
        done = [j for j in jobs if j["state"] == "done"]
        latencies = [float(j["seconds_from_last_instance"]) for j in done]
        inference = [float(j["inference_seconds"]) for j in done]
        for job in (j for j in jobs if j["state"] != "done"):
            print(f"  failed: {job['series_uid']}: {job.get('reason')}")
        print(f"SEG series in the PACS: {len(segs)}")
        print(f"node start-up (models loaded: {len(built) - builds}, one per worker): {loading:.1f} s")
        print(f"transfer Orthanc -> node, all series: {transfer:.1f} s")
        print(
            f"jobs: {len(done)} done, {len(jobs) - len(done)} failed; workers {args.workers}; idle wait {args.idle:.1f} s"
        )
        print(f"inference + SEG + SR per series: median {percentile(inference, 50):.1f} s")
        print(
            f"last instance -> SEG and SR acknowledged by the PACS: p50 {percentile(latencies, 50):.1f} s, "
            f"p95 {percentile(latencies, 95):.1f} s, max {max(latencies):.1f} s"
        )
        print(
            f"throughput: {len(done) / elapsed * 3600:.0f} series per hour ({elapsed:.1f} s for {len(done)})"
        )
        print(f"model loads after start-up: {len(built) - builds - args.workers}")


if __name__ == "__main__":
    main()
