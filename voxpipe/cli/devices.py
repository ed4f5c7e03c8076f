"""``voxpipe infer ... --devices 0,1``: one process per device over one case list.

Each device gets a process of the same command with ``--device`` set to it and ``--shard K/N``: the
n-th input goes to process ``n mod N`` (the shards voxpipe already runs under torchrun or a SLURM
array, which write into one output folder and merge their statistics). Every process loads the
models once for its cases. Why not ``torchrun``: it needs its own launcher and one command per node;
this is the single command a user with two GPUs types.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

from voxpipe.errors import InputError
from voxpipe.runtime import device_name


def parse_devices(text: str) -> list[str]:
    """``0,1`` → ``["cuda:0", "cuda:1"]``; names (``cpu``, ``cuda:1``, ``mps``) as they are
    (argparse ``type``)."""
    devices = []
    for item in text.split(","):
        item = item.strip()
        devices.append(f"cuda:{int(item)}" if item.isdigit() else device_name(item))
    if len(devices) < 2:
        raise argparse.ArgumentTypeError(f"expected two or more devices (e.g. 0,1), found {text!r}")
    return devices


def without_option(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` or ``flag=VALUE``."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            out.append(item)
    return out


def run_on_devices(
    argv: Sequence[str], devices: Sequence[str], *, shard_given: bool, device_given: bool
) -> int:
    """Run ``voxpipe ARGV`` once per device, as shard k of N, all at once; their exit code: 1 if one
    failed on voxpipe's bug, else 2 if one failed on its input, else 0.

    Raises:
        InputError: ``--shard`` or ``--device`` given as well (the devices set both).
    """
    if shard_given or device_given:
        raise InputError("--devices runs one shard per device: it takes neither --shard nor --device")
    base = without_option(argv, "--devices")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "voxpipe.cli", *base, "--device", device, "--shard", f"{k}/{len(devices)}"]
        )
        for k, device in enumerate(devices, start=1)
    ]
    codes = [process.wait() for process in processes]
    for device, code in zip(devices, codes, strict=True):
        if code:
            print(f"voxpipe: the process on {device} exited with {code}", file=sys.stderr)
    if any(code == 1 for code in codes):
        return 1
    return 2 if any(codes) else 0


__all__ = ["parse_devices", "run_on_devices", "without_option"]
