"""``voxpipe infer --timings``: where the time of a run goes, stage by stage.

Why our own: MONAI's ``Compose`` can log per-transform statistics but not their durations, and
Ignite's timers see a whole iteration. Here the bundle's workflow is instrumented just before it
runs (:func:`voxpipe.pipelines.bundles.run.run_bundle`'s ``before_run``):
- every transform of its ``preprocessing`` and ``postprocessing`` Composes is timed (in place, so
  ``Invertd`` can still invert the preprocessing);
- so is its inferer. For voxpipe's ``FastSlidingWindowInferer`` the network and the stitching are
  timed apart: windows run through a timed network.

Stages, by transform class:
- *load*: LoadVolumed, LoadImaged, EnsureChannelFirstd;
- *resample*: Orientationd, Spacingd;
- *intensity*: the other preprocessing transforms;
- *network*: the forward passes;
- *stitch*: the rest of the inferer (window grid, blending, TTA flips);
- *invert*: Activationsd, ResampleArgmaxd, Invertd, AsDiscreted (and ResampleArgmaxd's work inside
  the inferer when the rows are streamed into it);
- *post-process*: PostProcessd and MONAI's component filters;
- *write*: SaveLabelLiked, SaveImaged;
- *statistics* and *DICOM-SEG*: after the run.

Durations are wall-clock, synchronised on CUDA, and summed over cases.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voxpipe.transforms.files import write_text_atomic

STAGES = (
    "load",
    "resample",
    "intensity",
    "network",
    "stitch",
    "invert",
    "post-process",
    "write",
    "statistics",
    "DICOM-SEG",
)
_BY_CLASS = {
    "LoadVolumed": "load",
    "LoadImaged": "load",
    "EnsureChannelFirstd": "load",
    "Orientationd": "resample",
    "Spacingd": "resample",
    "Activationsd": "invert",
    "ResampleArgmaxd": "invert",
    "Invertd": "invert",
    "AsDiscreted": "invert",
    "PostProcessd": "post-process",
    "KeepLargestConnectedComponentd": "post-process",
    "RemoveSmallObjectsd": "post-process",
    "FillHolesd": "post-process",
    "SaveLabelLiked": "write",
    "SaveImaged": "write",
}


def _peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB.

    Linux: ``VmHWM`` of ``/proc/self/status`` (the ``ru_maxrss`` of ``getrusage`` survives ``exec``, so a
    child started by a large process would report its parent's peak); elsewhere ``ru_maxrss`` (bytes on macOS).
    """
    import resource
    import sys

    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _synchronise() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Timings:
    """Seconds per stage over a run, and the number of cases."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cases = 0
        # MiB by which the process's peak RSS rose while a stage ran (the prefetch thread's loading
        # overlaps the network, so a rise is attributed to the stage that was timed when it was seen).
        self.peak_raised_mib: dict[str, float] = {}
        self.peak_stage: str | None = None

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def timed(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started, peak = time.perf_counter(), _peak_rss_mib()
            try:
                return function(*args, **kwargs)
            finally:
                _synchronise()
                self.add(stage, time.perf_counter() - started)
                raised = _peak_rss_mib() - peak
                if raised > 0:
                    self.peak_raised_mib[stage] = self.peak_raised_mib.get(stage, 0.0) + raised
                    self.peak_stage = stage

        return call

    def instrument(self, workflow: Any) -> None:
        """Wrap the transforms and the inferer of an initialised inference workflow (its config ids
        ``preprocessing``, ``postprocessing``, ``evaluator``); ids a bundle lacks are left alone."""
        parser = workflow.parser
        for key, default in (("preprocessing", "intensity"), ("postprocessing", "post-process")):
            if key not in parser:
                continue
            compose = parser.get_parsed_content(key)
            transforms = getattr(compose, "transforms", None)
            if not isinstance(transforms, (list, tuple)):
                continue
            for index, transform in enumerate(transforms):
                _time_transform(
                    transform,
                    _BY_CLASS.get(type(transform).__name__, default),
                    self,
                    counts_cases=key == "preprocessing" and index == 0,
                )
        if "evaluator" in parser:
            evaluator = parser.get_parsed_content("evaluator")
            inferer = getattr(evaluator, "inferer", None)
            if inferer is not None:
                evaluator.inferer = _TimedInferer(inferer, self)

    def table(self) -> str:
        total = sum(self.seconds.values()) or 1.0
        lines = [f"{'stage':<13}{'seconds':>9}{'per case':>10}{'share':>8}"]
        for stage in [s for s in STAGES if s in self.seconds] + sorted(set(self.seconds) - set(STAGES)):
            value = self.seconds[stage]
            lines.append(
                f"{stage:<13}{value:9.2f}{value / max(self.cases, 1):10.2f}{100 * value / total:7.1f}%"
            )
        lines.append(
            f"{'total':<13}{sum(self.seconds.values()):9.2f}{sum(self.seconds.values()) / max(self.cases, 1):10.2f}"
            f"   ({self.cases} case(s))"
        )
        if self.peak_stage is not None:
            lines.append(f"peak RSS {_peak_rss_mib():.0f} MiB, last raised during {self.peak_stage}")
        return "\n".join(lines)

    def write(self, folder: Path) -> Path:
        document = {
            "cases": self.cases,
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "total_seconds": round(sum(self.seconds.values()), 4),
            "peak_rss_mib": round(_peak_rss_mib(), 1),
            "peak_rss_raised_mib": {k: round(v, 1) for k, v in self.peak_raised_mib.items()},
            "peak_last_raised_by": self.peak_stage,
        }
        return write_text_atomic(Path(folder) / "timings.json", json.dumps(document, indent=2) + "\n")


def _time_transform(transform: Any, stage: str, timings: Timings, *, counts_cases: bool = False) -> None:
    """Make ``transform`` add its duration to ``stage``, in place.

    The instance gets a subclass of its own class, of the same name, whose ``__call__`` is timed: it
    stays the same object in its Compose, so MONAI's ``Invertd`` (which inverts the preprocessing
    Compose and matches the transforms it recorded by class name and identity) still works. A
    transform whose class cannot be swapped (built-in types) is left untimed.
    """
    cls = type(transform)
    if getattr(cls, "_voxpipe_timed", False):
        return
    original = cls.__call__

    def __call__(self: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
        if counts_cases:
            timings.cases += 1
        return timings.timed(stage, original)(self, data, *args, **kwargs)

    timed = type(
        cls.__name__,
        (cls,),
        {
            "__call__": __call__,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "_voxpipe_timed": True,
        },
    )
    try:
        transform.__class__ = timed
    except TypeError:
        return


def _timed_network(network: Any, timings: Timings) -> Any:
    """``network`` inside a module whose forward adds its duration to the *network* stage (``.to``,
    ``torch.compile`` and channels-last conversion reach the wrapped module)."""
    import torch

    class TimedNetwork(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wrapped = network

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return timings.timed("network", self.wrapped)(*args, **kwargs)

        def timed(self, runtime: Any) -> Any:
            """The wrapped network as another runtime runs it (OpenVINO), timed as the network stage."""
            return timings.timed("network", runtime)

    return TimedNetwork()


class _TimedInferer:
    """The inferer, timed as a whole; its network calls timed apart (network vs stitch)."""

    def __init__(self, inferer: Any, timings: Timings) -> None:
        self.inferer, self.timings = inferer, timings
        self._networks: dict[int, Any] = {}  # one wrapper per network, so a compiled inferer compiles once

    def __call__(self, inputs: Any, network: Any, *args: Any, **kwargs: Any) -> Any:
        before = self.timings.seconds.get("network", 0.0)
        started = time.perf_counter()
        timed = self._networks.setdefault(id(network), _timed_network(network, self.timings))
        try:
            return self.inferer(inputs, timed, *args, **kwargs)
        finally:
            _synchronise()
            network_seconds = self.timings.seconds.get("network", 0.0) - before
            # a streamed inversion (FastSlidingWindowInferer.stream) runs inside the inferer
            invert_seconds = float(getattr(self.inferer, "last_counts", {}).get("invert_seconds", 0.0))
            if invert_seconds:
                self.timings.add("invert", invert_seconds)
            self.timings.add("stitch", time.perf_counter() - started - network_seconds - invert_seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inferer, name)
