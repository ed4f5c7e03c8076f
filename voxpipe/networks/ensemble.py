"""An ensemble of trained networks (the folds of a cross-validation) as one network.

Why our own: MONAI ensembles at the evaluator level (``EnsembleEvaluator`` + ``MeanEnsembled``):
one whole sliding-window pass per model, every model's full-volume prediction held at once, and
one weights file per model. Here the members run inside each window and their softmax
probabilities are averaged there, so voxpipe's fast inferer, TTA, ``--weights`` handling and the
bundle's single ``models/model.pt`` work unchanged. The output is the *logarithm* of the mean
probabilities: the bundle's softmax (``ResampleArgmaxd(softmax=True)`` or ``Activationsd``) gives back exactly that mean
(softmax(log p) = p when p sums to 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from voxpipe.errors import InputError
from voxpipe.networks.registry import build_network


class FoldEnsemble(torch.nn.Module):
    """Mean of the members' softmax probabilities, returned as log-probabilities ``(B, C, X, Y, Z)``.

    Args:
        networks: one ``build_network`` spec per member (``{"name": "dynunet", ...}``); or ``network``
            and ``members`` for ``members`` copies of one spec.
        weights: optional per-member weights files (otherwise load an ensemble state dict, keys
            ``members.<i>.<name>``, as the bundle's ``CheckpointLoader`` does).
    """

    def __init__(
        self,
        *,
        networks: Sequence[Mapping[str, Any]] | None = None,
        network: Mapping[str, Any] | None = None,
        members: int | None = None,
        weights: Sequence[str] | None = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        if networks is None:
            if network is None or not members or members < 1:
                raise InputError(
                    f"FoldEnsemble: expected networks=[...] or network + members >= 1, found members={members!r}"
                )
            networks = [network] * members
        if weights is not None and len(weights) != len(networks):
            raise InputError(
                f"FoldEnsemble: expected one weights file per member ({len(networks)}), found {len(weights)}"
            )
        built = []
        for index, spec in enumerate(networks):
            options = {k: v for k, v in dict(spec).items() if k not in ("_target_", "device")}
            if weights is not None:
                options["weights"] = weights[index]
            built.append(build_network(**options))
        self.members = torch.nn.ModuleList(built)
        if device is not None:
            self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, X, Y, Z) → log of the mean member probabilities (B, C, X, Y, Z)."""
        total = None
        for member in self.members:
            output = member(x)
            if isinstance(
                output, (list, tuple)
            ):  # deep-supervision networks in training mode: the full-size head
                output = output[0]
            elif output.ndim == x.ndim + 1:
                output = output[:, 0]
            probabilities = torch.softmax(output.float(), dim=1)
            total = probabilities if total is None else total + probabilities
        assert total is not None
        return torch.log((total / len(self.members)).clamp_min(1e-12))
