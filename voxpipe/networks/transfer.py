"""Transfer learning: load someone else's weights without guesswork, freeze, and split learning rates.

MONAI's ``copy_model_state`` copies matching tensors but says little about what it did, and
``CheckpointLoader(strict_shape=False)`` only logs a warning. A user fine-tuning a liver model into
a lung model needs to see *exactly* which tensors were reused, which were skipped because their
shape changed (the output head), and which stayed freshly initialised. This module adds that
report, the prefix handling that checkpoints from ``DataParallel``/Lightning/bundles need, and the
freezing and parameter-group helpers on top of MONAI's copy.

Weights are read only with ``torch.load(weights_only=True)``: a checkpoint that needs pickled code
to load is refused, never executed.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.utils import copy_model_state

from voxpipe.errors import InputError
from voxpipe.networks.registry import network_spec

logger = logging.getLogger(__name__)

#: Prefixes that wrappers add to parameter names: DataParallel/DDP (``module.``), Lightning and
#: many research repos (``model.``, ``net.``), voxpipe/MONAI checkpoint dicts (``network.``).
KNOWN_PREFIXES = ("module.", "model.", "net.", "network.")
#: Keys under which checkpoints nest the network's state dict, most specific first.
CONTAINER_KEYS = ("network", "model", "state_dict", "model_state_dict", "net", "network_weights")


@dataclass
class LoadReport:
    """What :func:`load_weights` did, tensor by tensor.

    Attributes:
        source: the file (or ``"<state dict>"``) the weights came from.
        loaded: target parameter/buffer names that received a tensor.
        skipped: target names whose source tensor had another shape → ``(source shape, target shape)``.
        missing: target names the source had nothing for (they keep their initialisation).
        unexpected: source names that match nothing in the target.
        stripped: prefixes removed from source names → how many names lost each.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    stripped: dict[str, int] = field(default_factory=dict)

    def summary(self, *, limit: int = 8) -> str:
        """Readable lines: counts, then the skipped, missing and unexpected names (up to ``limit`` each)."""
        total = len(self.loaded) + len(self.skipped) + len(self.missing)
        lines = [
            f"weights {self.source}: loaded {len(self.loaded)}/{total} tensors, "
            f"skipped {len(self.skipped)} (shape), missing {len(self.missing)}, unexpected {len(self.unexpected)}"
        ]
        if self.stripped:
            lines.append("  stripped prefixes: " + ", ".join(f"{p!r} ×{n}" for p, n in self.stripped.items()))
        for name, (source, target) in list(self.skipped.items())[:limit]:
            lines.append(f"  skipped {name}: checkpoint {list(source)} vs network {list(target)}")
        for title, names in (("missing", self.missing), ("unexpected", self.unexpected)):
            if names:
                more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
                lines.append(f"  {title}: {', '.join(names[:limit])}{more}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form of the report."""
        return {
            "source": self.source,
            "loaded": self.loaded,
            "skipped": {k: {"checkpoint": list(s), "network": list(t)} for k, (s, t) in self.skipped.items()},
            "missing": self.missing,
            "unexpected": self.unexpected,
            "stripped": self.stripped,
        }


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def load_torch_file(
    path: str | os.PathLike[str], *, mmap: bool = False, allowed_globals: Sequence[Any] = ()
) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors that name the file.

    ``mmap=True`` maps the tensors instead of reading them (zip-format files; others are read), so
    checking that a large weights file loads costs next to nothing. ``allowed_globals`` adds a few
    plain-data types to what the unpickler accepts (``torch.serialization.safe_globals``: the numpy
    scalars nnU-Net's checkpoints hold, say); nothing that runs code belongs there.

    Raises:
        InputError: no such file; the file needs pickled code (refused); it is truncated, not a torch
            file, or otherwise unreadable.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{str(source)!r}: expected a weights file, found no file")
    try:
        use_mmap = mmap and zipfile.is_zipfile(source)
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(source, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as error:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(error))
        what = (
            f"a pickled reference to {found.group(1)}"
            if found
            else "pickled objects or data that is not a torch file"
        )
        raise InputError(
            f"{str(source)!r}: expected tensors only, found {what}, which torch.load(weights_only=True) refuses",
            hint="re-save the weights with torch.save(model.state_dict(), path); voxpipe never unpickles code",
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as error:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise InputError(
            f"{str(source)!r}: expected a torch weights file, could not read it "
            f"({type(error).__name__}: {reason}; truncated or not a torch file?)"
        ) from error


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The network state dict in a weights file: a raw state dict, a MONAI bundle ``models/model.pt``,
    or a voxpipe/Ignite checkpoint (``{"network": ..., "optimizer": ...}``) and similar containers.

    Raises:
        InputError: no such file; the file needs pickled code (refused); it is not a torch file; or
            it holds no state dict (the message lists the keys it does hold).
    """
    source = Path(path)
    content = load_torch_file(source)
    if _is_state_dict(content):
        return dict(content)
    if isinstance(content, Mapping):
        for key in CONTAINER_KEYS:
            if _is_state_dict(content.get(key)):
                return dict(content[key])
        keys = sorted(str(k) for k in content)[:12]
        raise InputError(
            f"{str(source)!r}: expected a state dict (or one under {list(CONTAINER_KEYS)}), found keys {keys}"
        )
    raise InputError(f"{str(source)!r}: expected a state dict, found {type(content).__name__}")


def _target_name(name: str, targets: set[str], stripped: Counter[str]) -> str | None:
    """The target name a source name maps to: as is, after stripping wrapper prefixes, or with one added."""
    candidate = name
    removed: list[str] = []
    while True:
        if candidate in targets:
            stripped.update(removed)
            return candidate
        for prefix in KNOWN_PREFIXES:  # the target itself may use a wrapper-like name (MONAI UNet's "model.")
            if prefix + candidate in targets:
                stripped.update(removed)
                return prefix + candidate
        prefix = next((p for p in KNOWN_PREFIXES if candidate.startswith(p)), None)
        if prefix is None:
            return None
        removed.append(prefix)
        candidate = candidate[len(prefix) :]


def load_weights(
    network: torch.nn.Module,
    weights: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    strict: bool = False,
    exclude: str | None = None,
) -> LoadReport:
    """Copy matching tensors from ``weights`` into ``network`` (in place) and report what happened.

    Names are matched after stripping wrapper prefixes (:data:`KNOWN_PREFIXES`); tensors whose shape
    differs (e.g. an output head for another number of classes) are skipped and keep their
    initialisation. The copy itself is MONAI's ``copy_model_state``.

    Args:
        network: the network to fill.
        weights: a weights file (see :func:`read_state_dict`) or a state dict.
        strict: raise unless every network tensor was loaded with the same shape.
        exclude: regular expression of network names never to load (e.g. ``"^conv_final\\."``).

    Raises:
        InputError: nothing matched (wrong network?), or ``strict`` and something was skipped/missing.
    """
    if isinstance(weights, Mapping):
        source_name, state = "<state dict>", dict(weights)
    else:
        source_name, state = str(weights), read_state_dict(weights)
    target_state = network.state_dict()
    targets = set(target_state)
    report = LoadReport(source=source_name)
    stripped: Counter[str] = Counter()
    copy: dict[str, torch.Tensor] = {}
    excluded = re.compile(exclude) if exclude else None
    for name, tensor in state.items():
        target = _target_name(name, targets, stripped)
        if target is None:
            report.unexpected.append(name)
        elif excluded is not None and excluded.search(target):
            continue
        elif tuple(tensor.shape) != tuple(target_state[target].shape):
            report.skipped[target] = (tuple(tensor.shape), tuple(target_state[target].shape))
        else:
            copy[target] = tensor
    report.stripped = dict(stripped)
    if not copy:
        raise InputError(
            f"{source_name!r}: expected weights for {type(network).__name__}, found no tensor with a matching name "
            f"and shape (checkpoint names start {sorted(state)[:3]}, network names start {sorted(targets)[:3]})",
            hint="check the network name and its arguments (init_filters, channels) against the checkpoint",
        )
    copy_model_state(network, copy, inplace=True)
    report.loaded = [name for name in target_state if name in copy]
    report.missing = [name for name in target_state if name not in copy and name not in report.skipped]
    if strict and (report.skipped or report.missing):
        raise InputError(f"{source_name!r}: strict loading failed\n{report.summary()}")
    return report


def _matching(network: torch.nn.Module, patterns: Sequence[str]) -> list[str]:
    compiled = [re.compile(p) for p in patterns]
    return [name for name, _ in network.named_parameters() if any(c.search(name) for c in compiled)]


def freeze(network: torch.nn.Module, name: str, what: str | Sequence[str]) -> list[str]:
    """Stop gradients for part of a registered network; returns the frozen parameter names.

    Args:
        network: a network built by the registry as ``name``.
        name: its registry name (which says where encoder and head are).
        what: ``"encoder"``; ``"backbone"`` (everything except the output head: feature extraction);
            or module names / name prefixes (``["convInit", "down_layers.0"]``).

    Raises:
        InputError: a module name matches no parameter, or the network has no encoder/head defined.

    Note:
        BatchNorm layers in a frozen part still update their running statistics in training mode
        (DenseNet, ResNet); GroupNorm/InstanceNorm networks (SegResNet, U-Net) have none to update.
    """
    spec = network_spec(name)
    if what == "encoder":
        if not spec.encoder:
            raise InputError(
                f"freeze 'encoder': network {name!r} has no encoder defined; name the modules instead"
            )
        names = _matching(network, spec.encoder)
    elif what == "backbone":
        if not spec.head:
            raise InputError(
                f"freeze 'backbone': network {name!r} has no output head defined; name the modules instead"
            )
        head = set(_matching(network, spec.head))
        names = [n for n, _ in network.named_parameters() if n not in head]
    else:
        modules = [what] if isinstance(what, str) else list(what)
        names = []
        for module in modules:
            found = [
                n
                for n, _ in network.named_parameters()
                if n == module or n.startswith(module.rstrip(".") + ".")
            ]
            if not found:
                children = sorted(n for n, _ in network.named_children())
                raise InputError(
                    f"freeze {module!r}: expected a module of {name!r}, found none (top-level modules: {children})"
                )
            names.extend(found)
    chosen = set(names)
    for parameter_name, parameter in network.named_parameters():
        if parameter_name in chosen:
            parameter.requires_grad_(False)
    return [n for n, _ in network.named_parameters() if n in chosen]


def parameter_groups(
    network: torch.nn.Module, *, lr: float, pretrained: Iterable[str], pretrained_lr_scale: float = 0.1
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: reused (pretrained) tensors at ``lr * pretrained_lr_scale``, new ones at ``lr``.

    Frozen parameters are left out. Empty groups are dropped.
    """
    reused = set(pretrained)
    groups = {"pretrained": [], "new": []}
    for name, parameter in network.named_parameters():
        if parameter.requires_grad:
            groups["pretrained" if name in reused else "new"].append(parameter)
    scale = {"pretrained": pretrained_lr_scale, "new": 1.0}
    return [
        {"name": key, "params": params, "lr": lr * scale[key]} for key, params in groups.items() if params
    ]


def prepare_pretrained(
    network: torch.nn.Module,
    name: str,
    *,
    weights: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    freeze_part: str | Sequence[str] | None = None,
    strict: bool = False,
) -> LoadReport:
    """Load ``weights`` into ``network``, log the report, optionally freeze a part, and remember the report.

    The report is kept as ``network.voxpipe_load_report`` so :func:`voxpipe.pipelines.training.trainer.build_optimizer`
    can give reused tensors their own learning rate.
    """
    report = load_weights(network, weights, strict=strict)
    logger.info("%s", report.summary())
    if freeze_part:
        frozen = freeze(network, name, freeze_part)
        logger.info("froze %d parameter tensors (%s)", len(frozen), freeze_part)
    network.voxpipe_load_report = report
    return report
