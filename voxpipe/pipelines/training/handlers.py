"""Small Ignite handlers a training run needs and MONAI/Ignite do not provide as such.

- :class:`EpochSummary` – one log line per epoch and ``metrics.csv``; the loss is averaged over ranks.
- :class:`NanGuard` – stops training with a clear message when the loss is NaN/Inf (Ignite's
  ``TerminateOnNan`` ends the run silently as if it had finished).
- :class:`BestModel` – ``models/model.pt`` with the best weights, written atomically, its best score
  part of the resumable state (MONAI's ``CheckpointSaver`` writes in place, ``atomic=False``, and
  forgets the best score when a run resumes, so a worse model could overwrite the best one).
- :class:`RunCheckpoint` – ``checkpoints/last.pt`` with everything a resume needs, including the RNG
  states of torch, numpy, Python and every random transform (MONAI's ``CheckpointSaver`` has no RNG).
- :class:`ProgressPlot` – ``progress.png`` with loss and validation curves after each validation.
- :class:`CaseProgress` – Ignite's progress bar over the cases an inference run segments, switched by
  a config value (Ignite's ``ProgressBar`` cannot be switched off from a config without an expression).

Only rank 0 writes files and logs; collective operations run on every rank.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Randomizable

from voxpipe.errors import InputError, VoxpipeError
from voxpipe.transforms.files import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)


class TrainingDiverged(VoxpipeError):
    """The training loss became NaN or infinite."""


def is_main_process() -> bool:
    """True on rank 0 (or without distributed training): the process that writes files."""
    return idist.get_rank() == 0


def batch_loss(output: Any) -> float:
    """The loss of one trainer iteration, from MONAI's (decollated or not) engine output."""
    first = output[0] if isinstance(output, Sequence) and not isinstance(output, str) else output
    loss = first["loss"] if isinstance(first, Mapping) else first
    return float(loss.item() if isinstance(loss, torch.Tensor) else loss)


def _mean_over_ranks(value: float) -> float:
    if idist.get_world_size() <= 1:
        return value
    return float(idist.all_reduce(torch.tensor(value, dtype=torch.float64))) / idist.get_world_size()


def scalar_metrics(engine: Engine | None, *, epoch: int) -> dict[str, float]:
    """An evaluator's scalar metrics as ``val_<name>``, if it ran at trainer epoch ``epoch``."""
    # MONAI's evaluator runs with the trainer's epoch as its own: equal epochs mean it ran now.
    if engine is None or engine.state.epoch != epoch:
        return {}
    found: dict[str, float] = {}
    for name, value in engine.state.metrics.items():
        if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            found[name if name.startswith("val_") else f"val_{name}"] = float(value)
    return found


class EpochSummary:
    """Log one line per epoch (loss, lr, validation metrics, time) and keep ``metrics.csv`` current.

    The CSV is rewritten atomically at every epoch end with one row per epoch so far; columns are the
    union of all metrics seen (validation columns are empty on epochs without validation). The rows
    are part of the resumable state, so a resumed run continues the same file.
    """

    def __init__(self, output_dir: str | os.PathLike[str], *, evaluator: Engine | None = None) -> None:
        self.csv_path = Path(output_dir) / "metrics.csv"
        self.evaluator = evaluator
        self.rows: list[dict[str, Any]] = []
        self._losses: list[float] = []
        self._started = time.perf_counter()
        self._lr = math.nan

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rows = [dict(row) for row in state["rows"]]

    def _epoch_started(self, engine: Engine) -> None:
        self._losses, self._started = [], time.perf_counter()
        optimizer = getattr(engine, "optimizer", None)
        self._lr = (
            optimizer.param_groups[0]["lr"] if optimizer is not None else math.nan
        )  # the lr used this epoch

    def _iteration_completed(self, engine: Engine) -> None:
        self._losses.append(batch_loss(engine.state.output))

    def _epoch_completed(self, engine: Engine) -> None:
        row: dict[str, Any] = {
            "epoch": engine.state.epoch,
            "loss": _mean_over_ranks(sum(self._losses) / max(len(self._losses), 1)),
            "lr": self._lr,
            "seconds": time.perf_counter() - self._started,
        }
        val_metrics = scalar_metrics(self.evaluator, epoch=engine.state.epoch)
        row.update(val_metrics)
        self.rows.append(row)
        if not is_main_process():
            return
        shown = " ".join(f"{k} {v:.4f}" for k, v in val_metrics.items())
        logger.info(
            "epoch %d/%d: loss %.4f, lr %.2e, %.1f s%s",
            row["epoch"],
            engine.state.max_epochs,
            row["loss"],
            row["lr"],
            row["seconds"],
            f" | {shown}" if shown else "",
        )
        write_text_atomic(self.csv_path, rows_to_csv(self.rows))


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text with the union of the rows' keys as columns, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class NanGuard:
    """Raise :class:`TrainingDiverged` at the first iteration whose loss is NaN or infinite.

    The error names the epoch and iteration and what to try; the last checkpoint (previous epoch)
    stays intact. Under DDP the check is reduced over ranks, so every rank stops together.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = batch_loss(engine.state.output)
        bad = not math.isfinite(loss)
        if idist.get_world_size() > 1:
            bad = bool(idist.all_reduce(torch.tensor(float(bad))) > 0)
        if bad:
            raise TrainingDiverged(
                f"training loss: expected a finite value, found {loss} at epoch {engine.state.epoch}, "
                f"iteration {engine.state.iteration}",
                hint="lower learning_rate, set grad_clip (e.g. 1.0), or check the images with `voxpipe data check`; "
                "--resume restarts from the last good epoch",
            )


class BestModel:
    """Save the network's weights to ``path`` whenever the evaluator's ``metric`` improves (higher is better)."""

    def __init__(self, path: str | os.PathLike[str], network: torch.nn.Module, *, metric: str | None) -> None:
        self.path = Path(path)
        self.network = network
        self.metric = metric
        self.best = -math.inf
        self.best_epoch = 0

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, self)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])

    def __call__(self, evaluator: Engine) -> None:
        name = self.metric or getattr(evaluator.state, "key_metric_name", None)
        score = float(evaluator.state.metrics[name])
        if not score > self.best:  # NaN never improves
            return
        self.best, self.best_epoch = score, evaluator.state.epoch
        if is_main_process():
            with atomic_path(self.path) as tmp:
                torch.save(self.network.state_dict(), tmp)
            logger.info("new best %s %.4f at epoch %d: saved %s", name, score, self.best_epoch, self.path)


def _random_transforms(root: Any) -> Iterator[Randomizable]:
    """Every MONAI random transform reachable from ``root`` (a Compose, a list, a transform), in a fixed order."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or item is None:
            continue
        seen.add(id(item))
        if isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif (
            callable(item)
            and not isinstance(item, type)
            and hasattr(item, "__dict__")
            and type(item).__module__.startswith(("monai", "voxpipe"))
        ):
            if isinstance(item, Randomizable):
                yield item
            stack.extend(reversed([v for k, v in vars(item).items() if not k.startswith("__")]))


def rng_state(transform_root: Any = None) -> dict[str, Any]:
    """Random states of torch (CPU and CUDA), numpy, Python and every random transform under ``transform_root``.

    numpy states are stored as tensors and plain numbers so the checkpoint loads with
    ``torch.load(weights_only=True)``.
    """

    def numpy_state(state: tuple) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = state
        return {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        }

    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": numpy_state(np.random.get_state()),
        "python": dict(zip(("version", "internal", "gauss"), random.getstate(), strict=True)),
        "transforms": [numpy_state(t.R.get_state()) for t in _random_transforms(transform_root)],
    }


def set_rng_state(state: Mapping[str, Any], transform_root: Any = None) -> None:
    """Restore what :func:`rng_state` returned (the transforms must be built the same way)."""

    def numpy_state(saved: Mapping[str, Any]) -> tuple:
        return (
            saved["name"],
            saved["keys"].numpy().astype(np.uint32),
            saved["pos"],
            saved["has_gauss"],
            saved["cached"],
        )

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(numpy_state(state["numpy"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    transforms = list(_random_transforms(transform_root))
    if len(transforms) != len(state["transforms"]):
        logger.warning(
            "resume: %d random transforms now, %d in the checkpoint; their random states were not restored",
            len(transforms),
            len(state["transforms"]),
        )
        return
    for transform, saved in zip(transforms, state["transforms"], strict=True):
        transform.R.set_state(numpy_state(saved))


class RunCheckpoint:
    """``checkpoints/last.pt`` after every epoch: the state of every object plus the RNG states.

    ``objects`` maps names to things with ``state_dict``/``load_state_dict`` (network, optimizer,
    scheduler, grad scaler, the trainer engine, the handlers above). The file is written atomically
    (temp file + rename), so a kill during the write leaves the previous checkpoint. :meth:`restore`,
    attached to the trainer's ``STARTED`` event by :func:`~voxpipe.pipelines.training.trainer.build_trainer`,
    loads it back with ``torch.load(weights_only=True)``; the trainer then continues with the next epoch.
    """

    def __init__(
        self, path: str | os.PathLike[str], objects: dict[str, Any], *, transforms: Any = None
    ) -> None:
        self.path = Path(path)
        self.objects = objects  # the caller may add entries until the run starts
        self.transforms = transforms

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def save(self, engine: Engine) -> None:
        state = {name: obj.state_dict() for name, obj in self.objects.items()}
        state["rng"] = rng_state(self.transforms)
        if is_main_process():
            with atomic_path(self.path) as tmp:
                torch.save(state, tmp)

    def restore(self, engine: Engine) -> None:
        """Load ``last.pt`` into every object; without one, log that training starts from scratch."""
        if not self.path.is_file():
            logger.info("resume: no checkpoint at %s, starting from epoch 1", self.path)
            return
        from voxpipe.networks.transfer import load_torch_file

        state = load_torch_file(self.path)
        max_epochs = engine.state.max_epochs
        found = sorted(str(k) for k in state)[:12] if isinstance(state, dict) else type(state).__name__
        missing = [
            name for name in [*self.objects, "rng"] if not isinstance(state, dict) or name not in state
        ]
        if missing:
            raise InputError(
                f"{str(self.path)!r}: expected a resumable checkpoint with the states {missing}, found "
                f"{found} (a weights-only file?)",
                hint="resume needs the last.pt that training wrote; start without --resume to train from epoch 1",
            )
        for name, obj in self.objects.items():
            try:
                obj.load_state_dict(state[name])
            except (RuntimeError, KeyError, ValueError, TypeError) as error:
                raise InputError(
                    f"{str(self.path)!r}: the saved {name!r} state does not fit this run "
                    f"({' '.join(str(error).split())[:200]})",
                    hint="resume with the same bundle settings that wrote the checkpoint",
                ) from error
        engine.state.max_epochs = max_epochs  # the bundle may have raised max_epochs for the resumed run
        set_rng_state(state["rng"], self.transforms)
        logger.info("resumed from %s: epoch %d of %d done", self.path, engine.state.epoch, max_epochs)


class ProgressPlot:
    """Redraw ``progress.png`` (training loss, validation metrics per epoch) after each validation and at the end."""

    def __init__(self, path: str | os.PathLike[str], summary: EpochSummary) -> None:
        self.path = Path(path)
        self.summary = summary

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.draw)

    def _epoch_completed(self, engine: Engine) -> None:
        if self.summary.rows and any(k.startswith("val_") for k in self.summary.rows[-1]):
            self.draw(engine)

    def draw(self, engine: Engine | None = None) -> None:
        if not is_main_process() or not self.summary.rows:
            return
        from voxpipe.pipelines.training.curves import plot_curves  # matplotlib only when drawing

        plot_curves(self.summary.rows, self.path)


class CaseProgress:
    """Ignite ``ProgressBar`` over an evaluator's iterations (one case each in inference), when ``enabled``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = bool(enabled)

    def attach(self, engine: Engine) -> None:
        if self.enabled and is_main_process():
            from ignite.handlers import ProgressBar

            ProgressBar(
                persist=True, bar_format="{desc}cases {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"
            ).attach(engine)
