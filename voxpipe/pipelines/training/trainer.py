"""Training assembly: MONAI's ``SupervisedTrainer`` with voxpipe's handlers, in a fixed order.

Bundles (segmentation and classification alike) declare the parts (network, loss, optimizer, data,
evaluator) and call :func:`build_trainer` with plain arguments; it attaches what every run needs, in
an order that matters (Ignite runs the handlers of one event in the order they were attached):

1. ``resume``: :meth:`RunCheckpoint.restore` on ``STARTED``, first, so every later handler sees the
   restored epoch, and the RNG states are set just before the first batch is drawn.
2. The bundle's own ``train_handlers``.
3. :class:`NanGuard` – stops at the first NaN/Inf loss with a message (before anything logs it).
4. ``LrScheduleHandler`` – steps the scheduler at each epoch end (before validation reads the lr).
5. ``ValidationHandler`` – runs the evaluator every ``val_interval`` epochs with the bundle's
   validation inferer (for segmentation, the sliding-window inferer used for deployment). On the
   evaluator: :class:`BestModel` (``models/model.pt``), then Ignite's ``EarlyStopping``.
6. :class:`EpochSummary` – after validation, so it logs this epoch's validation metrics, not the
   previous ones: one log line per epoch and ``metrics.csv``.
7. :class:`ProgressPlot` (``progress.png``), TensorBoard events (``tensorboard/``), MLflow if asked.
8. :class:`RunCheckpoint` – ``checkpoints/last.pt`` after validation, so the saved state is complete.
9. At completion, ``models/model_final.pt``: the weights after the last epoch (nnU-Net's default for
   inference; on small validation sets "best" is noisy). Written atomically.
10. A progress bar over iterations.

Gradient clipping is an optimizer step pre-hook: it sees the gradients after AMP's unscaling and is
skipped with the step when AMP finds an overflow. Under ``torchrun`` the network is wrapped in
``DistributedDataParallel`` for training; validation, checkpoints and weights use the bare network.

Why a function and not YAML handlers: the checkpoint must hold the trainer itself, and a handler
listed in the trainer's own config that references the trainer is a circular reference for MONAI's
``ConfigParser``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping, ProgressBar
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, ValidationHandler
from monai.losses import DeepSupervisionLoss as _MonaiDeepSupervisionLoss
from monai.optimizers import WarmupCosineSchedule
from monai.utils import optional_import

from voxpipe.errors import InputError
from voxpipe.networks.transfer import parameter_groups
from voxpipe.pipelines.training.handlers import (
    BestModel,
    EpochSummary,
    NanGuard,
    ProgressPlot,
    RunCheckpoint,
    batch_loss,
    is_main_process,
)
from voxpipe.runtime import cpu_bf16_supported
from voxpipe.transforms.files import atomic_path

logger = logging.getLogger(__name__)


class CpuBf16Autocast(torch.nn.Module):
    """Run a network's forward pass under bfloat16 autocast on the CPU; outputs come back as float32.

    MONAI's engines only autocast on CUDA (``amp=True`` means ``torch.autocast("cuda")``). On CPUs
    with bf16 support (AVX512-BF16, AMX) this makes a SegResNet training step ~20% faster here;
    parameters, optimizer state and the loss stay float32. The wrapped module is ``.module``.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(B, C, X, Y, Z) → the wrapped network's output (a tensor or a deep-supervision list), float32."""
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.module(x)
        if isinstance(out, (list, tuple)):
            return [o.float() for o in out]
        return out.float()


class DeepSupervisionLoss(_MonaiDeepSupervisionLoss):
    """MONAI's ``DeepSupervisionLoss``, also accepting DynUNet's stacked training output.

    ``SegResNetDS`` returns a list of scales in training, DynUNet (``deep_supervision=True``) one
    tensor ``(B, 1 + deep_supr_num, C, X, Y, Z)`` with every scale upsampled; MONAI's class takes only
    the list. A plain ``(B, C, X, Y, Z)`` tensor (evaluation, or a network without deep supervision)
    gets the wrapped loss alone, so bundles can always use this wrapper.
    """

    def forward(self, input: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """input: (B, C, X, Y, Z), a list of such at decreasing size, or (B, S, C, X, Y, Z); target: (B, 1, X, Y, Z)."""
        if isinstance(input, torch.Tensor) and input.ndim == target.ndim + 1:
            input = list(torch.unbind(input, dim=1))
        return super().forward(input, target)


def build_scheduler(
    *,
    optimizer: torch.optim.Optimizer,
    name: str = "cosine",
    max_epochs: int,
    warmup_epochs: int = 0,
    power: float = 0.9,
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """An epoch-level learning-rate schedule by name.

    ``cosine`` (to 0 at ``max_epochs``), ``warmup_cosine`` (MONAI's ``WarmupCosineSchedule``: linear
    warm-up over ``warmup_epochs``, then cosine), ``poly`` (nnU-Net's ``(1 - epoch/max_epochs)**0.9``)
    or ``constant`` (returns ``None``).
    """
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
    if name == "warmup_cosine":
        return WarmupCosineSchedule(optimizer, warmup_steps=warmup_epochs, t_total=max_epochs)
    if name == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max_epochs, power=power)
    if name == "constant":
        return None
    raise InputError(
        f"lr_scheduler name: expected one of cosine, warmup_cosine, poly, constant; found {name!r}"
    )


def clip_gradients(optimizer: torch.optim.Optimizer, *, max_norm: float) -> Any:
    """Clip the global gradient norm of ``optimizer``'s parameters to ``max_norm`` before every step.

    MONAI's ``SupervisedTrainer`` has no clipping option; a step pre-hook runs after AMP's
    ``scaler.unscale_`` (so it clips true gradients) and not at all when AMP skips the step.
    Returns the hook handle.
    """
    if not max_norm > 0:
        raise InputError(f"grad_clip: expected a positive gradient norm, found {max_norm!r}")

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    return optimizer.register_step_pre_hook(hook)


def _transform_root(loader: Any) -> Any:
    dataset = getattr(loader, "dataset", None)
    return getattr(dataset, "transform", None)


def build_trainer(
    *,
    device: str | torch.device,
    max_epochs: int,
    train_data_loader: Any,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: Any,
    output_dir: str | os.PathLike[str],
    evaluator: SupervisedEvaluator | None = None,
    val_interval: int = 1,
    key_metric_name: str | None = None,
    lr_scheduler: Any = None,
    inferer: Any = None,
    postprocessing: Any = None,
    key_train_metric: dict[str, Any] | None = None,
    train_handlers: Sequence[Any] = (),
    amp: bool | str = "auto",
    cpu_bf16: bool = False,
    grad_clip: float | None = None,
    early_stop_patience: int | None = None,
    resume: bool = False,
    tensorboard: bool = True,
    mlflow: bool | str = False,
    plot: bool = True,
    progress: bool = True,
    iteration_update: Any = None,
) -> SupervisedTrainer:
    """Build a ``SupervisedTrainer`` with the handlers every voxpipe run needs (see module docstring).

    Args:
        device: training device; the network must already be on it.
        max_epochs: number of epochs (may be raised when resuming).
        train_data_loader: yields dicts with ``image`` (B, C, X, Y, Z) and ``label``.
        network, optimizer, loss_function: as for ``SupervisedTrainer``.
        output_dir: run folder; receives ``metrics.csv``, ``progress.png``, ``tensorboard/``,
            ``checkpoints/last.pt`` and ``models/``.
        evaluator: validation engine, run every ``val_interval`` epochs; its key metric (or
            ``key_metric_name``) selects ``models/model.pt``, higher is better.
        lr_scheduler: an epoch-level learning-rate scheduler (:func:`build_scheduler`), or ``None``.
        inferer, postprocessing, key_train_metric: passed to ``SupervisedTrainer``.
        train_handlers: further MONAI/Ignite handlers, attached early, in the given order.
        amp: ``"auto"`` uses automatic mixed precision on CUDA only; ``True``/``False`` force it.
        cpu_bf16: on a CPU device, run the training forward pass under bfloat16 autocast
            (:class:`CpuBf16Autocast`); validation and checkpoints use the float32 network.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        early_stop_patience: stop after this many validations without improvement (``None``: never).
        resume: continue from ``checkpoints/last.pt`` if it exists (model, optimizer, scheduler,
            grad scaler, epoch, best metric, early-stopping counter, metrics rows, RNG states).
        tensorboard: write TensorBoard events to ``output_dir/tensorboard``.
        mlflow: log to MLflow (needs the ``mlflow`` package): ``True`` for ``output_dir/mlruns``,
            or a tracking URI.
        plot: redraw ``progress.png`` after each validation.
        progress: show a progress bar over iterations.
        iteration_update: a process function ``(engine, batch) -> {"loss", ...}`` replacing MONAI's
            ``network → loss`` step (detection: the detector computes its own losses; ``loss_function``
            may then be ``None``). Batches are not decollated.
    """
    device = torch.device(device)
    use_amp = device.type == "cuda" if amp == "auto" else bool(amp)
    output_dir = Path(output_dir)
    if cpu_bf16 and device.type == "cpu":
        if not cpu_bf16_supported():
            logger.warning(
                "cpu_bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); PyTorch emulates it, "
                "tens of times slower than fp32 (set cpu_bf16 false)"
            )
    train_network = CpuBf16Autocast(network) if cpu_bf16 and device.type == "cpu" else network
    if idist.get_world_size() > 1:
        ids = [device] if device.type == "cuda" else None
        train_network = torch.nn.parallel.DistributedDataParallel(train_network, device_ids=ids)
    if grad_clip is not None:
        clip_gradients(optimizer, max_norm=float(grad_clip))
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_data_loader,
        network=train_network,
        optimizer=optimizer,
        loss_function=loss_function,
        inferer=inferer,
        postprocessing=postprocessing,
        key_train_metric=key_train_metric,
        amp=use_amp,
        iteration_update=iteration_update,
        decollate=iteration_update is None,
    )
    summary = EpochSummary(output_dir, evaluator=evaluator)
    state: dict[str, Any] = {
        "network": network,
        "optimizer": optimizer,
        "trainer": trainer,
        "summary": summary,
    }
    checkpoint = RunCheckpoint(
        output_dir / "checkpoints" / "last.pt", state, transforms=_transform_root(train_data_loader)
    )
    if resume:
        trainer.add_event_handler(Events.STARTED, checkpoint.restore)
    for handler in train_handlers:
        handler.attach(trainer)
    NanGuard().attach(trainer)
    if lr_scheduler is not None:
        LrScheduleHandler(lr_scheduler=lr_scheduler, print_lr=False).attach(trainer)
        state["lr_scheduler"] = lr_scheduler
    if getattr(trainer, "scaler", None) is not None:
        state["scaler"] = trainer.scaler
    if evaluator is not None:
        ValidationHandler(validator=evaluator, interval=val_interval, epoch_level=True).attach(trainer)
        best = BestModel(output_dir / "models" / "model.pt", network, metric=key_metric_name)
        best.attach(evaluator)
        state["best"] = best
        if early_stop_patience is not None:
            stopper = EarlyStopping(
                patience=int(early_stop_patience),
                score_function=lambda engine: float(
                    engine.state.metrics[key_metric_name or engine.state.key_metric_name]
                ),
                trainer=trainer,
            )
            evaluator.add_event_handler(Events.COMPLETED, stopper)
            state["early_stop"] = stopper
    summary.attach(trainer)
    if plot:
        ProgressPlot(output_dir / "progress.png", summary).attach(trainer)
    if tensorboard and is_main_process():
        if optional_import("tensorboard")[1]:
            _attach_tensorboard(trainer, evaluator, summary, output_dir / "tensorboard")
        else:  # metrics.csv and progress.png carry the same curves
            logger.warning(
                "tensorboard: true, but TensorBoard is not installed: no events written "
                "(metrics.csv and progress.png are); pip install 'voxpipe[tracking]', or set tensorboard: false"
            )
    if mlflow:
        _attach_mlflow(trainer, evaluator, output_dir, mlflow)
    checkpoint.attach(trainer)
    final_path = output_dir / "models" / "model_final.pt"

    @trainer.on(Events.COMPLETED)
    def _save_final_weights(engine: Engine) -> None:
        if is_main_process():
            with atomic_path(final_path) as tmp:
                torch.save(network.state_dict(), tmp)
            logger.info("saved final weights to %s", final_path)

    if progress and is_main_process():
        ProgressBar(persist=False).attach(
            trainer, output_transform=lambda output: {"loss": batch_loss(output)}
        )
    return trainer


def _attach_tensorboard(
    trainer: Engine, evaluator: Engine | None, summary: EpochSummary, log_dir: Path
) -> None:
    """MONAI's ``TensorBoardStatsHandler``: loss per iteration, validation metrics per epoch; plus epoch loss and lr."""
    from monai.handlers import TensorBoardStatsHandler
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    TensorBoardStatsHandler(
        summary_writer=writer, output_transform=batch_loss, tag_name="train/loss_iteration", epoch_log=False
    ).attach(trainer)
    if evaluator is not None:
        TensorBoardStatsHandler(
            summary_writer=writer,
            iteration_log=False,
            output_transform=lambda output: None,
            global_epoch_transform=lambda _: trainer.state.epoch,
        ).attach(evaluator)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _epoch(engine: Engine) -> None:
        row = summary.rows[-1]
        writer.add_scalar("train/loss", row["loss"], row["epoch"])
        writer.add_scalar("train/lr", row["lr"], row["epoch"])
        writer.flush()

    trainer.add_event_handler(Events.COMPLETED, lambda engine: writer.close())


def _attach_mlflow(trainer: Engine, evaluator: Engine | None, output_dir: Path, mlflow: bool | str) -> None:
    """MONAI's ``MLFlowHandler`` on the trainer (loss) and the evaluator (metrics), if mlflow is installed."""
    _, has_mlflow = optional_import("mlflow")
    if not has_mlflow:
        raise InputError(
            "mlflow: expected the mlflow package for MLflow logging, found it not installed",
            hint="pip install mlflow, or set mlflow: false",
        )
    from monai.handlers import MLFlowHandler

    uri = (output_dir / "mlruns").resolve().as_uri() if mlflow is True else str(mlflow)
    if is_main_process():
        MLFlowHandler(tracking_uri=uri, output_transform=batch_loss, experiment_name="voxpipe").attach(
            trainer
        )
        if evaluator is not None:
            MLFlowHandler(
                tracking_uri=uri,
                iteration_log=False,
                output_transform=lambda output: None,
                global_epoch_transform=lambda _: trainer.state.epoch,
                experiment_name="voxpipe",
            ).attach(evaluator)


_OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def build_optimizer(
    *,
    network: torch.nn.Module,
    name: str = "adamw",
    lr: float = 1e-3,
    pretrained_lr_scale: float = 1.0,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """An optimizer over ``network``'s trainable parameters, by name (``adamw``, ``adam``, ``sgd``).

    Lets bundles say ``network: "@network_def"`` instead of a ``$@network_def.parameters()``
    expression. Frozen parameters (``requires_grad=False``) are left out. When the network was built
    from pretrained weights (``build_network(..., weights=...)``) and ``pretrained_lr_scale`` is not 1,
    the reused tensors train at ``lr * pretrained_lr_scale`` and the new ones (the head) at ``lr``.
    """
    if name not in _OPTIMIZERS:
        raise InputError(f"optimizer name: expected one of {sorted(_OPTIMIZERS)}, found {name!r}")
    report = getattr(network, "voxpipe_load_report", None)
    if report is not None and pretrained_lr_scale != 1.0:
        groups = parameter_groups(
            network, lr=lr, pretrained=report.loaded, pretrained_lr_scale=pretrained_lr_scale
        )
        return _OPTIMIZERS[name](groups, lr=lr, **kwargs)
    params = [p for p in network.parameters() if p.requires_grad]
    return _OPTIMIZERS[name](params, lr=lr, **kwargs)
