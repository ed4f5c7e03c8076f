"""Test helpers importable from bundle configs (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch


class OracleNet(torch.nn.Module):
    """A 'network' that maps normalised intensity to classes voxel by voxel.

    On a noise-free phantom whose intensity encodes its label (see ``label_image``), this predicts
    the label exactly on whatever grid it is given. Being pointwise, sliding-window blending cannot
    change its answer, so any difference between its written output and the label comes from the
    geometry chain (orientation, resampling, inversion, writing): exactly what the tests check.
    """

    def __init__(self, centres: tuple[float, ...] = (1 / 3, 2 / 3, 1.0)) -> None:
        super().__init__()
        self.register_buffer("centres", torch.tensor(centres).view(1, -1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) intensities in [0, 1] → (B, C, X, Y, Z) logits."""
        return -1000.0 * (x - self.centres) ** 2


def label_image(label):
    """HU image whose value encodes the label: 0 → 0 HU, 1 → 100 HU, 2 → 200 HU.

    With the bundle's [-100, 200] HU window these become 0.333, 0.667 and 1.0, OracleNet's centres.
    """
    return (100 * label).astype("int16")


# Small versions of each registered network, so tests parametrized over the registry stay quick on 2 CPU cores.
SMALL = {
    "unet3d": {"channels": (8, 16, 32), "strides": (2, 2)},
    "segresnet": {"init_filters": 8},
    "segresnet_ds": {"init_filters": 8},
    "dynunet": {"filters": [8, 16, 32, 64, 128]},
    "attention_unet": {"channels": (8, 16, 32), "strides": (2, 2)},
    "swin_unetr": {"feature_size": 12, "depths": (1, 1, 1, 1)},
    "unetr": {"img_size": (32, 32, 32), "hidden_size": 96, "mlp_dim": 192, "num_heads": 4, "feature_size": 8},
    "densenet121": {"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2, 2)},
    "densenet169": {"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2, 2)},
    "densenet201": {"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2, 2)},
    "resnet": {},
}


class PauseAt:
    """Training handler for the kill-and-resume test: at ``iteration``, write ``marker`` and wait to be killed."""

    def __init__(self, iteration: int, marker: str) -> None:
        self.iteration = iteration
        self.marker = marker

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), self)

    def __call__(self, engine) -> None:
        import pathlib
        import time

        pathlib.Path(self.marker).write_text(f"epoch {engine.state.epoch} iteration {engine.state.iteration}")
        time.sleep(120)  # the test sends SIGKILL now
