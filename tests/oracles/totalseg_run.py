"""Run TotalSegmentator 2.18.0 itself, offline, on one image: the test oracle of voxpipe's
TotalSegmentator path (tests/test_totalseg.py runs this file in a child process whose ``sys.path``
holds ``.oracle/nnunet`` and ``.oracle/totalseg``, which ``make oracle`` installs).

    TOTALSEG_HOME_DIR=... TOTALSEG_WEIGHTS_PATH=... python tests/oracles/totalseg_run.py JOBS.json RESULTS.json

Each job is ``{"input", "output", "task", "options"}``; the options are ``totalsegmentator()``'s
(``ml``, ``fast``, ``fastest``, ``roi_subset``, ``statistics``, ``body_seg``, ``robust_crop``,
``force_split``, ``remove_small_blobs``, ``resampling_order``, ``save_lowres``,
``higher_order_resampling``). One process runs them all (its imports take seconds).

The caller writes TotalSegmentator's config.json (no usage statistics) and the weights folder; every
network (IP) connection is refused here as well, so nothing can reach the network.
"""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

_connect = socket.socket.connect


def _offline(self, address):  # local (AF_UNIX) sockets stay: nnU-Net's process pool uses them
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise OSError(f"the TotalSegmentator oracle runs offline (refused {address})")
    return _connect(self, address)


def run(job: dict) -> None:
    import totalsegmentator.python_api as api
    from totalsegmentator.python_api import totalsegmentator

    # TotalSegmentator 2.18.0's own bug, worked around so that its map can be compared at all: a task
    # with a crop task (teeth) calls itself with convert_device_to_string(device), which returns None
    # for the CPU's device (a string, not a torch.device), and the nested call then fails on None
    # before anything is computed. Given a string, the string is what it means.
    original = api.convert_device_to_string
    api.convert_device_to_string = lambda device: device if isinstance(device, str) else original(device)

    options = job.get("options", {})
    totalsegmentator(
        Path(job["input"]),
        Path(job["output"]),
        ml=bool(options.get("ml")),
        task=job["task"],
        fast=bool(options.get("fast")),
        fastest=bool(options.get("fastest")),
        roi_subset=options.get("roi_subset"),
        statistics=bool(options.get("statistics")),
        body_seg=bool(options.get("body_seg")),
        robust_crop=bool(options.get("robust_crop")),
        force_split=bool(options.get("force_split")),
        remove_small_blobs=options.get("remove_small_blobs") or False,
        resampling_order=int(options.get("resampling_order", 1)),
        save_lowres=bool(options.get("save_lowres")),
        higher_order_resampling=bool(options.get("higher_order_resampling")),
        device=job.get("device", "cpu"),
        quiet=True,
    )


def main() -> None:
    socket.socket.connect = _offline  # type: ignore[method-assign]
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs", type=Path, help="a JSON list of {input, output, task, options}")
    parser.add_argument("results", type=Path, help="where to write each job's outcome (JSON)")
    args = parser.parse_args()
    outcomes = []
    for job in json.loads(args.jobs.read_text()):
        try:
            run(job)
            outcomes.append({"ok": True})
        except BaseException as error:  # (TotalSegmentator exits on some inputs)
            import traceback

            outcomes.append(
                {
                    "ok": False,
                    "error": f"{type(error).__name__}: {error}",
                    "trace": traceback.format_exc()[-3000:],
                }
            )
    args.results.write_text(json.dumps(outcomes, indent=1))


if __name__ == "__main__":
    main()
