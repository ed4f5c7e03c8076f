"""nnU-Net v2's two U-Nets (PlainConvUNet, ResidualEncoderUNet), built from a plans file, with nnU-Net's
state-dict keys, so the ``network_weights`` of an nnU-Net checkpoint load into them as they are.

Why our own: nnU-Net builds its networks with ``dynamic-network-architectures``, whose packaging
requires ``timm``, which requires ``torchvision``, which does not load beside the CPU torch voxpipe
pins (and MONAI has no network with these modules or keys). The two networks are small, so they are
written here, module for module: the same attribute names give the same state-dict keys (a
convolution is registered both as ``conv`` and inside ``all_modules``, and the decoder holds the
encoder, so those keys appear twice, as in nnU-Net's checkpoints). The test suite builds both
networks from the same plans with ``dynamic-network-architectures`` (installed without its
dependencies) and compares keys, shapes and outputs.

The plans name classes as strings (``"torch.nn.modules.conv.Conv3d"``). They are looked up in
:data:`OPERATIONS` and :data:`NETWORKS`, never imported: a plans file can name nothing else.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from voxpipe.errors import Fields, InputError

#: The operations a plans file may name (``_kw_requires_import`` values), by every name nnU-Net writes.
OPERATIONS: dict[str, type[nn.Module]] = {}
for _module, _names in {
    nn.Conv1d: ("Conv1d",),
    nn.Conv2d: ("Conv2d",),
    nn.Conv3d: ("Conv3d",),
    nn.InstanceNorm1d: ("InstanceNorm1d",),
    nn.InstanceNorm2d: ("InstanceNorm2d",),
    nn.InstanceNorm3d: ("InstanceNorm3d",),
    nn.BatchNorm1d: ("BatchNorm1d",),
    nn.BatchNorm2d: ("BatchNorm2d",),
    nn.BatchNorm3d: ("BatchNorm3d",),
    nn.GroupNorm: ("GroupNorm",),
    nn.Dropout: ("Dropout",),
    nn.Dropout2d: ("Dropout2d",),
    nn.Dropout3d: ("Dropout3d",),
    nn.LeakyReLU: ("LeakyReLU",),
    nn.ReLU: ("ReLU",),
    nn.PReLU: ("PReLU",),
    nn.GELU: ("GELU",),
}.items():
    _where = _module.__module__  # torch.nn.modules.conv and the like
    for _name in _names:
        OPERATIONS[_name] = _module
        OPERATIONS[f"torch.nn.{_name}"] = _module
        OPERATIONS[f"{_where}.{_name}"] = _module

_PACKAGE = "dynamic_network_architectures.architectures.unet"
#: Network classes a plans file may name (``architecture.network_class_name`` or legacy ``UNet_class_name``).
NETWORKS = {
    "PlainConvUNet": "PlainConvUNet",
    f"{_PACKAGE}.PlainConvUNet": "PlainConvUNet",
    "ResidualEncoderUNet": "ResidualEncoderUNet",
    f"{_PACKAGE}.ResidualEncoderUNet": "ResidualEncoderUNet",
}


def _per_dim(value: int | Sequence[int], dims: int) -> list[int]:
    return [int(value)] * dims if isinstance(value, (int, float)) else [int(v) for v in value]


def _dims(conv_op: type[nn.Module]) -> int:
    return {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[conv_op]


class ConvDropoutNormReLU(nn.Module):
    """Convolution, then optional dropout, normalisation and non-linearity (or non-linearity before
    the normalisation with ``nonlin_first``); "same" padding for odd kernels."""

    def __init__(
        self,
        conv_op: type[nn.Module],
        input_channels: int,
        output_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: Mapping[str, Any] | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: Mapping[str, Any] | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: Mapping[str, Any] | None = None,
        nonlin_first: bool = False,
    ) -> None:
        super().__init__()
        dims = _dims(conv_op)
        kernel, self.stride = _per_dim(kernel_size, dims), _per_dim(stride, dims)
        self.input_channels, self.output_channels = input_channels, output_channels
        self.conv = conv_op(
            input_channels,
            output_channels,
            kernel,
            self.stride,
            padding=[(k - 1) // 2 for k in kernel],
            dilation=1,
            bias=conv_bias,
        )
        parts: list[nn.Module] = [self.conv]
        if dropout_op is not None:
            self.dropout = dropout_op(**dict(dropout_op_kwargs or {}))
            parts.append(self.dropout)
        if norm_op is not None:
            self.norm = norm_op(output_channels, **dict(norm_op_kwargs or {}))
            parts.append(self.norm)
        if nonlin is not None:
            self.nonlin = nonlin(**dict(nonlin_kwargs or {}))
            parts.append(self.nonlin)
        if nonlin_first and norm_op is not None and nonlin is not None:
            parts[-1], parts[-2] = parts[-2], parts[-1]
        self.all_modules = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_modules(x)


def _stack(
    block: type[nn.Module],
    count: int,
    conv_op: type[nn.Module],
    inputs: int,
    outputs: int,
    kernel: Any,
    stride: Any,
    options: tuple[Any, ...],
) -> nn.Sequential:
    """``count`` blocks in a row; the first changes the width and carries the stride."""
    return nn.Sequential(
        *[
            block(conv_op, inputs if i == 0 else outputs, outputs, kernel, stride if i == 0 else 1, *options)
            for i in range(int(count))
        ]
    )


class _Stacked(nn.Module):
    """``count`` blocks of ``block`` in a row under the attribute nnU-Net's state-dict keys use."""

    attribute = ""
    block: Any = None

    def __init__(
        self,
        count: int,
        conv_op: type[nn.Module],
        input_channels: int,
        output_channels: int,
        kernel_size: int | Sequence[int],
        initial_stride: int | Sequence[int],
        *options: Any,
    ) -> None:
        super().__init__()
        stack = _stack(
            type(self).block,
            count,
            conv_op,
            input_channels,
            output_channels,
            kernel_size,
            initial_stride,
            options,
        )
        setattr(self, self.attribute, stack)
        self.output_channels = output_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.attribute)(x)


class StackedConvBlocks(_Stacked):
    """``num_convs`` :class:`ConvDropoutNormReLU` (module ``convs``)."""

    attribute, block = "convs", ConvDropoutNormReLU


class BasicBlockD(nn.Module):
    """The ResNet-D basic block of nnU-Net's residual encoders: two convolutions (the second without
    non-linearity) plus a skip (average pooling where strided, a 1 × 1 convolution where the width
    changes), then the non-linearity."""

    def __init__(
        self,
        conv_op: type[nn.Module],
        input_channels: int,
        output_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        conv_bias: bool,
        norm_op: type[nn.Module] | None,
        norm_op_kwargs: Mapping[str, Any] | None,
        dropout_op: type[nn.Module] | None,
        dropout_op_kwargs: Mapping[str, Any] | None,
        nonlin: type[nn.Module] | None,
        nonlin_kwargs: Mapping[str, Any] | None,
    ) -> None:
        super().__init__()
        stride = _per_dim(stride, _dims(conv_op))
        self.conv1 = ConvDropoutNormReLU(
            conv_op,
            input_channels,
            output_channels,
            kernel_size,
            stride,
            conv_bias,
            norm_op,
            norm_op_kwargs,
            dropout_op,
            dropout_op_kwargs,
            nonlin,
            nonlin_kwargs,
        )
        self.conv2 = ConvDropoutNormReLU(
            conv_op, output_channels, output_channels, kernel_size, 1, conv_bias, norm_op, norm_op_kwargs
        )
        self.nonlin2 = nonlin(**dict(nonlin_kwargs or {})) if nonlin is not None else nn.Identity()
        strided, widened = any(s != 1 for s in stride), input_channels != output_channels
        skip: list[nn.Module] = []
        if strided:
            pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[_dims(conv_op)]
            skip.append(pool(stride, stride))
        if widened:
            skip.append(
                ConvDropoutNormReLU(
                    conv_op, input_channels, output_channels, 1, 1, False, norm_op, norm_op_kwargs
                )
            )
        self.skip = nn.Sequential(*skip) if skip else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        out += self.skip(x)
        return self.nonlin2(out)


class StackedResidualBlocks(_Stacked):
    """``n_blocks`` :class:`BasicBlockD` (module ``blocks``)."""

    attribute, block = "blocks", BasicBlockD


class _Encoder(nn.Module):
    """The encoder both U-Nets share the layout of: stages (after an optional stem); returns every
    stage's output (the skips)."""

    def __init__(
        self,
        *,
        residual: bool,
        input_channels: int,
        features: Sequence[int],
        conv_op: type[nn.Module],
        kernel_sizes: Sequence[Any],
        strides: Sequence[Any],
        per_stage: Sequence[int],
        options: tuple[Any, ...],
        stem_channels: int | None = None,
    ) -> None:
        super().__init__()
        dims = _dims(conv_op)
        self.conv_op, self.kernel_sizes = conv_op, list(kernel_sizes)
        self.strides = [_per_dim(s, dims) for s in strides]
        self.output_channels = [int(f) for f in features]
        self.conv_bias, self.options = options[0], options
        stages: list[nn.Module] = []
        channels = input_channels
        if residual:
            stem = int(stem_channels or features[0])
            self.stem = StackedConvBlocks(1, conv_op, channels, stem, kernel_sizes[0], 1, *options)
            channels = stem
            for s, width in enumerate(self.output_channels):
                stages.append(
                    StackedResidualBlocks(
                        per_stage[s], conv_op, channels, width, kernel_sizes[s], strides[s], *options[:7]
                    )
                )
                channels = width
        else:
            self.stem = None
            for s, width in enumerate(self.output_channels):
                stages.append(
                    nn.Sequential(
                        StackedConvBlocks(
                            per_stage[s], conv_op, channels, width, kernel_sizes[s], strides[s], *options
                        )
                    )
                )
                channels = width
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.stem is not None:
            x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class _Decoder(nn.Module):
    """Transposed convolution up, concatenation with the skip, convolutions; one 1 × 1 segmentation
    layer per stage (all of them with deep supervision, else only the last is used)."""

    def __init__(
        self, encoder: _Encoder, num_classes: int, per_stage: Sequence[int], deep_supervision: bool
    ) -> None:
        super().__init__()
        self.deep_supervision = bool(deep_supervision)
        self.encoder = encoder  # registered: its keys appear again under decoder.encoder, as in nnU-Net
        self.num_classes = int(num_classes)
        up = {nn.Conv1d: nn.ConvTranspose1d, nn.Conv2d: nn.ConvTranspose2d, nn.Conv3d: nn.ConvTranspose3d}
        widths = encoder.output_channels
        stages, transpconvs, seg_layers = [], [], []
        for s in range(1, len(widths)):
            below, skip, stride = widths[-s], widths[-(s + 1)], encoder.strides[-s]
            transpconvs.append(up[encoder.conv_op](below, skip, stride, stride, bias=encoder.conv_bias))
            stages.append(
                StackedConvBlocks(
                    per_stage[s - 1],
                    encoder.conv_op,
                    2 * skip,
                    skip,
                    encoder.kernel_sizes[-(s + 1)],
                    1,
                    *encoder.options,
                )
            )
            seg_layers.append(encoder.conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(transpconvs)
        self.seg_layers = nn.ModuleList(seg_layers)

    def features(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """The last stage's output, before its segmentation layer (what ``seg_layers[-1]`` takes)."""
        x = skips[-1]
        for s, (transpconv, stage) in enumerate(zip(self.transpconvs, self.stages, strict=True)):
            x = stage(torch.cat((transpconv(x), skips[-(s + 2)]), 1))
        return x

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        for s, (transpconv, stage) in enumerate(zip(self.transpconvs, self.stages, strict=True)):
            x = stage(torch.cat((transpconv(x), skips[-(s + 2)]), 1))
            if self.deep_supervision:
                outputs.append(self.seg_layers[s](x))
            elif s == len(self.stages) - 1:
                outputs.append(self.seg_layers[-1](x))
        outputs.reverse()  # the full-resolution output first
        return outputs if self.deep_supervision else outputs[0]


class NnUNet(nn.Module):
    """An nnU-Net v2 U-Net: ``kind`` ``"PlainConvUNet"`` or ``"ResidualEncoderUNet"``; the arguments
    are the plans' ``arch_kwargs`` with the operations resolved (:func:`network_from_plans`)."""

    def __init__(
        self,
        kind: str,
        *,
        input_channels: int,
        num_classes: int,
        n_stages: int,
        features_per_stage: int | Sequence[int],
        conv_op: type[nn.Module],
        kernel_sizes: Any,
        strides: Any,
        n_conv_per_stage_decoder: int | Sequence[int],
        n_conv_per_stage: int | Sequence[int] | None = None,
        n_blocks_per_stage: int | Sequence[int] | None = None,
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: Mapping[str, Any] | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: Mapping[str, Any] | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: Mapping[str, Any] | None = None,
        deep_supervision: bool = False,
        nonlin_first: bool = False,
        stem_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        stages = int(n_stages)

        def listed(value: Any, count: int, name: str) -> list[Any]:
            values = [value] * count if isinstance(value, (int, float)) else list(value)
            if len(values) != count:
                raise InputError(f"arch_kwargs.{name}: expected {count} entries, found {len(values)}")
            return values

        residual = kind == "ResidualEncoderUNet"
        per_stage = n_blocks_per_stage if residual else n_conv_per_stage
        options = (
            bool(conv_bias),
            norm_op,
            norm_op_kwargs,
            dropout_op,
            dropout_op_kwargs,
            nonlin,
            nonlin_kwargs,
            bool(nonlin_first),
        )
        self.encoder = _Encoder(
            residual=residual,
            input_channels=int(input_channels),
            features=listed(features_per_stage, stages, "features_per_stage"),
            conv_op=conv_op,
            kernel_sizes=listed(kernel_sizes, stages, "kernel_sizes"),
            strides=listed(strides, stages, "strides"),
            per_stage=listed(per_stage, stages, "n_blocks_per_stage" if residual else "n_conv_per_stage"),
            options=options,
            stem_channels=stem_channels,
        )
        self.decoder = _Decoder(
            self.encoder,
            int(num_classes),
            listed(n_conv_per_stage_decoder, stages - 1, "n_conv_per_stage_decoder"),
            deep_supervision,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The network without its last 1 × 1 segmentation layer (:attr:`head`): ``head(features(x))``
        is ``forward(x)`` without deep supervision. The head can then run a few classes at a time."""
        return self.decoder.features(self.encoder(x))

    @property
    def head(self) -> nn.Module:
        """The last 1 × 1 segmentation layer."""
        return self.decoder.seg_layers[-1]


def _operation(value: Any, where: str) -> type[nn.Module] | None:
    if value is None:
        return None
    found = OPERATIONS.get(str(value))
    if found is None:
        raise InputError(
            f"{where}: expected a convolution, normalisation, dropout or activation of torch.nn "
            f"(one of {sorted(k for k in OPERATIONS if '.' not in k)}), found {value!r}",
            hint="voxpipe builds only the operations nnU-Net's plans use; it never imports a class a plans file names",
        )
    return found


def network_from_plans(
    plans: Mapping[str, Any],
    configuration: Mapping[str, Any],
    *,
    input_channels: int,
    num_classes: int,
    deep_supervision: bool = False,
    source: str = "plans.json",
) -> NnUNet:
    """The network of one resolved configuration (``inherits_from`` already applied) of an nnU-Net v2 plans.

    Both forms are read: ``architecture`` (``network_class_name`` + ``arch_kwargs`` +
    ``_kw_requires_import``, nnU-Net ≥ 2.3) and the legacy keys (``UNet_class_name``,
    ``UNet_base_num_features``, ``conv_kernel_sizes``, ``pool_op_kernel_sizes``,
    ``n_conv_per_stage_encoder``/``_decoder``, ``unet_max_num_features``).

    Raises:
        InputError: a class or operation outside the allow-lists, or inconsistent sizes (named).
    """
    architecture = configuration.get("architecture")
    if isinstance(architecture, Mapping):
        name = str(architecture.get("network_class_name"))
        kwargs = dict(architecture.get("arch_kwargs") or {})
        for key in architecture.get("_kw_requires_import", []) or []:
            kwargs[key] = _operation(kwargs.get(key), f"{source}: arch_kwargs.{key}")
        where = "architecture.network_class_name"
    else:
        name = str(configuration.get("UNet_class_name"))
        where = "UNet_class_name"
        kernels = configuration.get("conv_kernel_sizes")
        pools = configuration.get("pool_op_kernel_sizes")
        if not kernels or not pools:
            raise InputError(
                f"{source}: expected 'architecture' or the legacy conv_kernel_sizes and pool_op_kernel_sizes, found neither"
            )
        dims = len(kernels[0])
        base = int(configuration.get("UNet_base_num_features", 32))
        ceiling = int(configuration.get("unet_max_num_features", 320 if dims == 3 else 512))
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
        kwargs = {
            "n_stages": len(kernels),
            "features_per_stage": [min(base * 2**i, ceiling) for i in range(len(kernels))],
            "conv_op": conv,
            "kernel_sizes": kernels,
            "strides": pools,
            "n_conv_per_stage_decoder": configuration.get("n_conv_per_stage_decoder", 2),
            "conv_bias": True,
            "norm_op": {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims],
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "nonlin": nn.LeakyReLU,
            "nonlin_kwargs": {"inplace": True},
        }
        per_stage = configuration.get("n_conv_per_stage_encoder", 2)
        kwargs[
            "n_blocks_per_stage" if NETWORKS.get(name) == "ResidualEncoderUNet" else "n_conv_per_stage"
        ] = per_stage
    kind = NETWORKS.get(name)
    if kind is None:
        raise InputError(
            f"{source}: {where}: expected PlainConvUNet or ResidualEncoderUNet (dynamic_network_architectures), found {name!r}",
            hint="voxpipe runs nnU-Net's two standard U-Nets; other trainers' networks are not supported",
        )
    block = kwargs.pop("block", None)
    if block not in (
        None,
        "BasicBlockD",
        f"{_PACKAGE.rsplit('.', 2)[0]}.building_blocks.residual.BasicBlockD",
    ):
        raise InputError(f"{source}: arch_kwargs.block: expected BasicBlockD, found {block!r}")
    for key in ("input_channels", "num_classes", "deep_supervision"):
        kwargs.pop(key, None)
    known = set(inspect.signature(NnUNet.__init__).parameters) - {"self", "kind"}
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:
        raise InputError(f"{source}: arch_kwargs: unexpected {unknown} for {kind}")
    try:
        return NnUNet(
            kind,
            input_channels=int(input_channels),
            num_classes=int(num_classes),
            deep_supervision=deep_supervision,
            **kwargs,
        )
    except (TypeError, ValueError, KeyError) as error:
        raise InputError(f"{source}: arch_kwargs do not describe a {kind}: {error}") from None


def _numpy_globals() -> list[Any]:
    """The plain-data numpy types nnU-Net's checkpoints pickle (its ``logging`` lists and ``_best_ema``
    hold numpy scalars): the scalar constructor under its numpy 1 and 2 names, and the dtypes."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: list[Any] = [
        multiarray.scalar,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray.scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    for kind in (
        np.float16,
        np.float32,
        np.float64,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.bool_,
    ):
        dtype_class = type(np.dtype(kind))
        allowed += [dtype_class, (dtype_class, f"numpy.dtypes.{dtype_class.__name__}")]
    return allowed


@dataclass(frozen=True)
class NnUNetCheckpoint:
    """What voxpipe reads of an nnU-Net v2 ``checkpoint_*.pth``."""

    path: str
    weights: dict[str, torch.Tensor]
    trainer: str
    mirroring_axes: tuple[int, ...] | None
    configuration: str | None


def check_checkpoint(content: Mapping[str, Any], source: str, *, dims: int | None = None) -> None:
    """A checkpoint's fields besides the weights: ``inference_allowed_mirroring_axes`` (distinct axes
    within the image), ``trainer_name``, ``init_args.configuration``; the weights finite."""
    fields = Fields(source)
    axes = content.get("inference_allowed_mirroring_axes")
    if axes is not None:
        high = (dims - 1) if dims else 2
        values = fields.integers(axes, "inference_allowed_mirroring_axes", low=0, high=high)
        if len(set(values)) != len(values):
            raise fields.fail("inference_allowed_mirroring_axes", "distinct axes", axes)
    if "trainer_name" in content:
        fields.string(content["trainer_name"], "trainer_name")
    init = content.get("init_args")
    if isinstance(init, Mapping) and "configuration" in init:
        fields.string(init["configuration"], "init_args.configuration")
    for key, tensor in content["network_weights"].items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise fields.fail(f"network_weights.{key}", "finite values", "NaN or infinity", shown=False)


def read_checkpoint(path: str | os.PathLike[str]) -> NnUNetCheckpoint:
    """An nnU-Net v2 checkpoint, loaded with ``torch.load(weights_only=True)`` and an allow-list of
    numpy's plain-data types (nnU-Net itself loads it with ``weights_only=False``, which runs any
    code the file holds).

    Raises:
        InputError: the file needs anything else (refused, the global named), is unreadable, or
            holds no ``network_weights`` (named).
    """
    from voxpipe.networks.transfer import load_torch_file

    content = load_torch_file(path, allowed_globals=_numpy_globals())
    weights = content.get("network_weights") if isinstance(content, Mapping) else None
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        found = sorted(map(str, content))[:12] if isinstance(content, Mapping) else type(content).__name__
        raise InputError(
            f"{str(path)!r}: expected an nnU-Net checkpoint (a dict with 'network_weights' of tensors), found {found}"
        )
    check_checkpoint(content, str(path))
    axes = content.get("inference_allowed_mirroring_axes")
    init = content.get("init_args") if isinstance(content.get("init_args"), Mapping) else {}
    return NnUNetCheckpoint(
        path=str(path),
        weights=dict(weights),
        trainer=str(content.get("trainer_name", "")),
        mirroring_axes=tuple(int(a) for a in axes) if axes is not None else None,
        configuration=str(init["configuration"]) if "configuration" in init else None,
    )


__all__ = [
    "NETWORKS",
    "OPERATIONS",
    "NnUNet",
    "NnUNetCheckpoint",
    "network_from_plans",
    "read_checkpoint",
]
