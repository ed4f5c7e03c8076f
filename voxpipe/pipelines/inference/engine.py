"""One inference engine: a bundle's network built and its weights loaded once, then cases run one at a time.

A bundle's inference config is a MONAI ``SupervisedEvaluator`` over a data loader of the whole
datalist, whose ``CheckpointLoader`` loads the weights every time the evaluator starts. Running it
as is, one failing case stops the run for every case after it, and running it again (for the rest,
or for the next series a PACS sends) rebuilds the network and reloads the weights. Here the
workflow is initialised once (:func:`voxpipe.pipelines.bundles.run.run_bundle` with
``execute=False``: every check of a bundle run, safe mode included), the checkpoint loaders run once
and are detached, and :meth:`InferenceEngine.run` feeds the evaluator one case per run: each case
succeeds or fails on its own, with its reason, and the next case's loading and resampling (the
bundle's ``preprocessing``) runs in a thread while the network works on the current one. When the
post-processing starts with ``ResampleArgmaxd`` and the inferer is voxpipe's, the engine links them so
the logits are streamed into the source grid's labels as the windows finish (no C × network grid).

The case loop is :func:`voxpipe.pipelines.inference.cases.run_cases`, the one every inference path uses.

Why our own: MONAI's evaluator and ``ThreadDataLoader`` end the whole run at the first failing case,
and MONAI has no object that keeps a bundle's network warm between runs. The bundle's ``evaluator``,
``preprocessing`` and ``handlers`` ids are what is needed (voxpipe's bundles and the Model Zoo's
inference configs have them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxpipe.errors import BundleError
from voxpipe.pipelines.inference.cases import CaseResult, run_cases

logger = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """How often this engine's expensive parts ran: the workflow built, the weights loaded, the cases
    run (``voxpipe serve --status`` shows them per worker)."""

    builds: int = 0
    weight_loads: int = 0
    cases: int = 0


class InferenceEngine:
    """A bundle's inference workflow, built once, run case by case.

    Args:
        bundle_dir: bundle folder with ``configs/inference.{yaml,json}``.
        overrides: config values (``checkpoint``, ``output_dir``, run options...), as for
            :func:`voxpipe.pipelines.bundles.run.run_bundle`; ``datalist`` is set per case.
        safe: safe mode (:mod:`voxpipe.pipelines.bundles.safety`), checked before anything is built.
        before_run: called once with the initialised workflow (``Timings.instrument``).
        prefetch: prepare the next case in a thread while the network runs (the bundle's ``prefetch``
            value when it has one).

    Raises:
        BundleError: the bundle lacks ``evaluator``/``preprocessing``, is refused, or its weights do not
            load into its network (named); nothing is run then.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str],
        *,
        overrides: Mapping[str, Any] | None = None,
        safe: bool = False,
        before_run: Callable[[Any], None] | None = None,
        prefetch: bool | None = None,
    ) -> None:
        from ignite.engine import Events
        from monai.handlers import CheckpointLoader

        from voxpipe.pipelines.bundles.run import run_bundle

        self.bundle_dir = Path(bundle_dir)
        values = {**(overrides or {}), "datalist": []}
        self.workflow = run_bundle(
            bundle_dir, config="inference", overrides=values, safe=safe, before_run=before_run, execute=False
        )
        self.stats = EngineStats(builds=1)
        parser = self.workflow.parser
        missing = [key for key in ("evaluator", "preprocessing") if key not in parser]
        if missing:
            raise BundleError(
                f"{str(self.bundle_dir)!r}: the inference config has no {missing}; expected a MONAI evaluator and "
                "its preprocessing (the bundle layout voxpipe runs case by case)"
            )
        self.evaluator = parser.get_parsed_content("evaluator")
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.prefetch = bool(parser.get("prefetch", 1)) if prefetch is None else bool(prefetch)
        loaders = [
            handler
            for handler in (parser.get_parsed_content("handlers") if "handlers" in parser else [])
            if isinstance(handler, CheckpointLoader)
        ]
        for loader in loaders:  # the weights, once: then the evaluator starts without reloading them
            if self.evaluator.has_event_handler(loader, Events.STARTED):
                try:
                    loader(self.evaluator)
                except Exception as error:
                    from voxpipe.pipelines.bundles.config import find_config
                    from voxpipe.pipelines.bundles.run import condensed, hint_for, innermost_error

                    root = innermost_error(error)
                    raise BundleError(
                        f"{str(getattr(loader, 'load_path', '?'))!r}: the weights do not fit the network of "
                        f"{str(find_config(self.bundle_dir, 'inference'))!r} ({type(root).__name__}: "
                        f"{condensed(str(root))})",
                        hint=hint_for(str(root)),
                    ) from error
                self.evaluator.remove_event_handler(loader, Events.STARTED)
                self.stats.weight_loads += 1
        self.writers = _writers(parser)
        self.streamed = _link_streaming(parser, self.evaluator)

    def set_output_dir(self, output_dir: str | os.PathLike[str]) -> None:
        """Point the bundle's writers (voxpipe's ``SaveLabelLiked``, MONAI's ``SaveImage(d)``, the
        probabilities of ``ResampleArgmaxd`` when on) at ``output_dir`` without rebuilding anything.

        Raises:
            BundleError: the bundle writes through a component whose folder is not known here.
        """
        if not self.writers:
            raise BundleError(
                f"{str(self.bundle_dir)!r}: no known writer in the postprocessing to point at {str(output_dir)!r}"
            )
        for owner, attribute in self.writers:
            if attribute == "probabilities_dir" and getattr(owner, attribute) is None:
                continue
            setattr(owner, attribute, Path(output_dir))

    def _prepared(self, item: dict[str, Any]) -> Any:
        return self.preprocessing(dict(item))

    def _run_prepared(self, prepared: Any) -> None:
        from monai.data import DataLoader, Dataset

        loader = DataLoader(Dataset([prepared], transform=None), batch_size=1, num_workers=0, shuffle=False)
        self.evaluator.data_loader = loader
        self.evaluator.state.epoch_length = len(loader)  # built on an empty datalist: 0 iterations otherwise
        try:
            self.evaluator.run()
        finally:  # the case's arrays (its label map, its network-grid image) are not kept to the next case
            self.evaluator.state.batch = self.evaluator.state.output = None
        self.stats.cases += 1

    def run(self, cases: Sequence[Any], *, item: Callable[[Any], dict[str, Any]]) -> Iterator[CaseResult]:
        """Run ``cases`` one by one; yield a :class:`CaseResult` for each, in order.

        ``item(case)`` is the datalist entry (``{"image": ...}``). A case whose loading, network or
        writing fails yields its error and reason; the next case runs. A full disk or a read-only
        output stops the run: that case and every later one yield the machine's reason.
        """
        yield from run_cases(
            cases,
            prepare=lambda case: self._prepared(item(case)),
            execute=self._run_prepared,
            prefetch=self.prefetch,
        )


def _writers(parser: Any) -> list[tuple[Any, str]]:
    """(object, attribute) pairs holding the output folder of the bundle's writers, where known."""
    from voxpipe.transforms.invert import ResampleArgmaxd
    from voxpipe.transforms.io import SaveLabelLiked

    found: list[tuple[Any, str]] = []
    if "postprocessing" not in parser:
        return found
    chain = getattr(parser.get_parsed_content("postprocessing"), "transforms", []) or []
    for transform in _flatten(chain):
        inner = transform
        if isinstance(inner, SaveLabelLiked):
            found.append((inner, "output_dir"))
        elif isinstance(inner, ResampleArgmaxd):
            found.append((inner, "probabilities_dir"))
        else:
            saver = getattr(inner, "saver", inner)
            layout = getattr(saver, "folder_layout", None)
            if layout is not None and hasattr(layout, "output_dir"):
                found.append((layout, "output_dir"))
    return found


def _link_streaming(parser: Any, evaluator: Any) -> bool:
    """Let the inferer hand its logits to the post-processing's ``ResampleArgmaxd`` row block by row
    block (no C × network grid; the same labels) when that transform comes first and reads the
    evaluator's ``pred`` against its ``image``, and the inferer is voxpipe's. Returns whether it did.

    Why here: the inferer and the post-processing are separate config entries; only the engine, which
    runs both for every case, knows that nothing between them reads the whole prediction.
    """
    from voxpipe.pipelines.inference.sliding_window import FastSlidingWindowInferer
    from voxpipe.transforms.invert import ResampleArgmaxd

    if "postprocessing" not in parser:
        return False
    chain = list(_flatten(getattr(parser.get_parsed_content("postprocessing"), "transforms", []) or []))
    first = chain[0] if chain else None
    if (
        not isinstance(first, ResampleArgmaxd)
        or tuple(first.keys) != ("pred",)
        or first.reference_key != "image"
    ):
        return False
    inferer = getattr(evaluator, "inferer", None)
    while inferer is not None and not isinstance(inferer, FastSlidingWindowInferer):
        inferer = getattr(inferer, "__dict__", {}).get("inferer")  # voxpipe's timing wrapper
    if inferer is None or not inferer.stream:
        return False
    inferer.stream_into = first
    return True


def _flatten(transforms: Sequence[Any]) -> Iterator[Any]:
    for transform in transforms:
        inner = getattr(transform, "transforms", None)
        if isinstance(inner, (list, tuple)):
            yield from _flatten(inner)
        else:
            yield transform


def engine_key(bundle_dir: str | os.PathLike[str], weights: str | os.PathLike[str] | None) -> tuple[Any, ...]:
    """What, on disk, an engine was built from: the bundle's config files and the weights file, with
    their modification times and sizes. ``voxpipe serve`` rebuilds its engine when this changes."""
    files = sorted((Path(bundle_dir) / "configs").glob("*")) + ([Path(weights)] if weights else [])
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())


__all__ = [
    "EngineStats",
    "InferenceEngine",
    "engine_key",
]
