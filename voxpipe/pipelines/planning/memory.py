"""Measured training memory and step time of a planned network, on the device present.

Why our own: nnU-Net sizes patches with a fixed proxy (feature-map elements, 560e6 ≈ 8 GB at batch
size 2), which is wrong for other networks, other precisions and CPUs. Here one training step
(forward, loss, backward, optimiser step; mixed precision on CUDA, as voxpipe trains there) of the
planned MONAI network runs at the planned patch and batch size:
on CUDA the peak is ``torch.cuda.max_memory_allocated``; on CPU the step runs in a child process
whose peak resident set (``ru_maxrss``) minus its resident set just before the step is the figure
(a fresh process, so earlier allocations in this one cannot hide the peak).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from voxpipe.errors import InputError


@dataclass(frozen=True)
class Measurement:
    """One training step of the network: peak bytes above the idle process, seconds per step."""

    device: str
    batch_size: int
    patch_size: list[int]
    peak_bytes: int
    step_seconds: float


def _step(
    network_spec: dict[str, Any],
    patch_size: list[int],
    batch_size: int,
    in_channels: int,
    device: str,
    steps: int,
) -> tuple[int, float, int]:
    """Run ``steps`` training steps; (peak bytes, mean seconds of the steps after the first, baseline bytes)."""
    import resource

    import torch

    from voxpipe.networks import build_network

    torch.manual_seed(0)
    network = build_network(**network_spec).to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    image = torch.randn(batch_size, in_channels, *patch_size, device=device)
    target = torch.randint(0, network_spec["out_channels"], (batch_size, *patch_size), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        # CUDA: mixed precision, as voxpipe's trainer runs there (AMP); CPU: fp32 (cpu_bf16 is opt-in).
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
            output = network(image)
            if (
                output.ndim == image.ndim + 1
            ):  # DynUNet's deep supervision: (B, S, C, X, Y, Z); all scales train
                output = output.flatten(0, 1)
                loss = loss_fn(output.float(), target.repeat_interleave(output.shape[0] // batch_size, dim=0))
            else:
                loss = loss_fn(output.float(), target)
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timed = seconds[1:] or seconds
    return int(peak - baseline), float(sum(timed) / len(timed)), int(baseline)


def measure_step(
    network_spec: dict[str, Any],
    *,
    patch_size: list[int],
    batch_size: int,
    in_channels: int,
    device: str = "cpu",
    steps: int = 2,
    timeout: float = 1800.0,
) -> Measurement:
    """Peak memory and seconds of one training step of ``build_network(**network_spec)``.

    Raises:
        InputError: the step ran out of memory or the child process failed (its last line quoted).
    """
    if device.startswith("cuda"):
        import torch

        try:
            peak, seconds, _ = _step(network_spec, patch_size, batch_size, in_channels, device, steps)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            peak, seconds = -1, float("nan")
        finally:
            torch.cuda.empty_cache()
        return Measurement(device, batch_size, list(patch_size), peak, seconds)
    request = json.dumps(
        {
            "network": network_spec,
            "patch_size": list(patch_size),
            "batch_size": batch_size,
            "in_channels": in_channels,
            "device": device,
            "steps": steps,
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "voxpipe.pipelines.planning.memory"],
        input=request,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(
            f"memory measurement of a training step at patch {patch_size}, batch {batch_size}: "
            f"expected the child process to finish, found exit code {done.returncode} ({last})",
            hint="the step may need more memory than this machine has; give --gpu-memory a smaller budget",
        )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return Measurement(device, batch_size, list(patch_size), answer["peak_bytes"], answer["step_seconds"])


def as_dict(measurement: Measurement) -> dict[str, Any]:
    return asdict(measurement)


def _main() -> None:
    request = json.loads(sys.stdin.read())
    peak, seconds, baseline = _step(
        request["network"],
        request["patch_size"],
        request["batch_size"],
        request["in_channels"],
        request["device"],
        request["steps"],
    )
    # The reply to measure_step, which reads the last line of this child process's stdout.
    sys.stdout.write(
        json.dumps({"peak_bytes": peak, "step_seconds": seconds, "baseline_bytes": baseline}) + "\n"
    )


if __name__ == "__main__":
    _main()
