"""3D RetinaNet for lung-nodule detection: MONAI's ``RetinaNet`` and ``RetinaNetDetector``, built by name.

MONAI has the detector (``monai.apps.detection``: heads, anchor generator, ATSS matcher, hard-negative
sampler, box coder, box selector with NMS). Two pieces are voxpipe's own, and why:

* :class:`ResNetFPN`, the feature extractor. MONAI's ``BackboneWithFPN`` and
  ``resnet_fpn_feature_extractor`` take the backbone's layers through torchvision's
  ``IntermediateLayerGetter``, and torchvision cannot be installed beside the CPU torch wheel that
  voxpipe pins (its ``torchvision::nms`` operator fails to load). This module runs the same ResNet
  stem and layers, then MONAI's ``FeaturePyramidNetwork`` with ``LastLevelMaxPool``, and lets the
  pyramid width be chosen: 256 channels (torchvision's fixed value) is the size for a GPU, 64 keeps a
  CPU training step in seconds.
* :class:`NoduleDetector` matches anchors with MONAI's ATSS matcher only: MONAI's
  ``compute_anchor_matched_idxs`` first asks whether the matcher is torchvision's ``Matcher``, and
  without torchvision that question itself raises.
* :class:`AutocastHeads`: the network runs under autocast (fp16 on CUDA, bf16 on CPU) and its head
  maps come back float32, so anchor matching, the focal loss and the box decoding run in float32.
  Under fp16 the logits of a large volume overflow otherwise, and the detector then stops on "NaN or
  Inf in predicted classification logits".

Boxes follow MONAI's detection convention: ``xyzxyz`` corner coordinates on the network input's
voxel axes (voxel i spans [i, i + 1)); :mod:`voxpipe.transforms.boxes` converts them to world mm.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets import resnet

from voxpipe.errors import InputError

BOX_KEY, LABEL_KEY, SCORE_KEY = "box", "label", "label_scores"


class ResNetFPN(torch.nn.Module):
    """A MONAI ResNet's stem and first ``len(returned_layers)`` stages, then a feature pyramid.

    ``forward``: (B, C, X, Y, Z) → ordered dict of ``len(returned_layers) + 1`` maps (B, out_channels, ...),
    finest first; the last is the max-pooled extra level (``LastLevelMaxPool``).
    """

    def __init__(
        self, backbone: resnet.ResNet, *, returned_layers: Sequence[int] = (1, 2), out_channels: int = 64
    ) -> None:
        super().__init__()
        layers = [int(k) for k in returned_layers]
        if not layers or layers != sorted(set(layers)) or layers[0] < 1 or layers[-1] > 4:
            raise InputError(
                f"returned_layers: expected increasing stage numbers in 1..4, found {list(returned_layers)}"
            )
        self.stem = torch.nn.Sequential(backbone.conv1, backbone.bn1, backbone.act, backbone.maxpool)
        self.stages = torch.nn.ModuleList(getattr(backbone, f"layer{k}") for k in range(1, layers[-1] + 1))
        self.returned = layers
        widths = [_stage_width(getattr(backbone, f"layer{k}")) for k in layers]
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=3,
            in_channels_list=widths,
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(3),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, X, Y, Z) → the pyramid's maps, finest first."""
        x = self.stem(x)
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        for number, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if number in self.returned:
                features[str(len(features))] = x
        return self.fpn(features)


def _stage_width(stage: torch.nn.Module) -> int:
    convs = [m for m in stage.modules() if isinstance(m, torch.nn.Conv3d)]
    return int(convs[-1].out_channels)


class AutocastHeads(torch.nn.Module):
    """Run a detection network under autocast; its head maps (a dict or list of lists of tensors) come back float32.

    ``dtype`` ``None`` runs the network as it is. The wrapped network is ``.module`` (the weights
    are saved from it, so checkpoints do not depend on the precision).
    """

    def __init__(self, module: torch.nn.Module, *, device_type: str, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def __getattr__(
        self, name: str
    ) -> Any:  # the detector reads num_anchors, size_divisible, ... from its network
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)

    def forward(self, images: torch.Tensor) -> Any:
        """(B, C, X, Y, Z) → the wrapped network's head maps, float32."""
        if self.dtype is None:
            return self.module(images)
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.module(images)
        if isinstance(out, dict):
            return {key: [t.float() for t in value] for key, value in out.items()}
        return [t.float() for t in out]


class NoduleDetector(RetinaNetDetector):
    """MONAI's ``RetinaNetDetector``, matching anchors with its ATSS matcher without importing torchvision.

    A scan (or patch) without boxes gets every anchor as background (-1), as in MONAI.
    """

    def compute_anchor_matched_idxs(
        self,
        anchors: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        num_anchor_locs_per_level: Sequence[int],
    ) -> list[torch.Tensor]:
        """Per image, the matched box index of every anchor (-1: background), as MONAI's method."""
        matched = []
        for anchors_per_image, targets_per_image in zip(anchors, targets, strict=True):
            boxes = targets_per_image[self.target_box_key]
            if boxes.numel() == 0:
                matched.append(
                    torch.full(
                        (anchors_per_image.size(0),), -1, dtype=torch.int64, device=anchors_per_image.device
                    )
                )
                continue
            _, indices = self.proposal_matcher(
                boxes.to(anchors_per_image.device),
                anchors_per_image,
                num_anchor_locs_per_level,
                self.num_anchors_per_loc,
            )
            matched.append(indices)
        return matched


def build_retinanet(
    *,
    in_channels: int = 1,
    num_classes: int = 1,
    num_anchors: int = 3,
    layers: Sequence[int] = (1, 1, 1, 1),
    block_inplanes: Sequence[int] = (16, 32, 64, 128),
    block: str = "basic",
    returned_layers: Sequence[int] = (1, 2),
    fpn_channels: int = 64,
    conv1_stride: Sequence[int] = (2, 2, 1),
    conv1_size: Sequence[int] = (7, 7, 7),
    device: str | torch.device = "cpu",
) -> RetinaNet:
    """MONAI's 3D ``RetinaNet`` on a ResNet + FPN (:class:`ResNetFPN`).

    Defaults are a ResNet-10 of width 16 to 128 with a 64-channel pyramid on stages 1 and 2: level
    strides (4, 4, 2), (8, 8, 4) and (16, 16, 8) voxels with the (2, 2, 1) stem (as MONAI's LUNA16
    tutorial, whose network is a ResNet-50 with a 256-channel pyramid).
    """
    if block not in ("basic", "bottleneck"):
        raise InputError(f"block: expected 'basic' or 'bottleneck', found {block!r}")
    backbone = resnet.ResNet(
        block=resnet.ResNetBlock if block == "basic" else resnet.ResNetBottleneck,
        layers=list(layers),
        block_inplanes=list(block_inplanes),
        spatial_dims=3,
        n_input_channels=in_channels,
        conv1_t_stride=tuple(conv1_stride),
        conv1_t_size=tuple(conv1_size),
    )
    extractor = ResNetFPN(backbone, returned_layers=returned_layers, out_channels=fpn_channels)
    stride = [
        int(s) * 2 ** (int(list(returned_layers)[-1]) + 1) for s in conv1_stride
    ]  # stem, max-pool, stages 2.., extra level
    network = RetinaNet(
        spatial_dims=3,
        num_classes=num_classes,
        num_anchors=num_anchors,
        feature_extractor=extractor,
        size_divisible=stride,
    )
    return network.to(device)


def build_detector(
    *,
    network: torch.nn.Module,
    base_anchor_shapes: Sequence[Sequence[float]],
    feature_map_scales: Sequence[int] = (1, 2, 4),
    atss_candidates: int = 4,
    hard_negatives_per_image: int = 64,
    positive_fraction: float = 0.3,
    score_thresh: float = 0.02,
    nms_thresh: float = 0.22,
    topk_candidates_per_level: int = 1000,
    detections_per_image: int = 100,
    roi_size: Sequence[int] = (96, 96, 64),
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    cls_loss: str = "hard_negative",
    precision: str = "fp32",
    device: str | torch.device = "cpu",
) -> NoduleDetector:
    """MONAI's ``RetinaNetDetector`` with everything set: ATSS matching, hard-negative sampling, the box
    selector (score and NMS thresholds) and a sliding-window inferer whose maps are stitched on the CPU.

    Args:
        network: a :func:`build_retinanet` network (its weights are what training saves).
        base_anchor_shapes: anchor shapes (voxels at the network's input spacing) of the finest
            level; level l has them × ``feature_map_scales[l]``. ``plan_anchors`` chooses them.
        cls_loss: ``hard_negative`` (MONAI's LUNA16 recipe: BCE on all positives and the hardest
            negatives, ``hard_negatives_per_image`` anchors per image at ``positive_fraction``) or
            ``focal`` (RetinaNet's sigmoid focal loss over every anchor, gamma 2).
        precision: ``fp32``, ``bf16`` (autocast), ``fp16`` (CUDA AMP) or ``auto`` (fp16 on CUDA, else
            fp32); losses stay float32.
    """
    shapes = [[float(v) for v in shape] for shape in base_anchor_shapes]
    if not shapes or any(len(s) != 3 or min(s) <= 0 for s in shapes):
        raise InputError(
            f"base_anchor_shapes: expected a list of positive (x, y, z) sizes, found {base_anchor_shapes!r}"
        )
    if len(shapes) != network.num_anchors:
        raise InputError(
            f"base_anchor_shapes: expected {network.num_anchors} shapes (the network's num_anchors), found {len(shapes)}"
        )
    device = torch.device(device)
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, "bad")
    if dtype == "bad":
        raise InputError(f"precision: expected auto, fp32, bf16 or fp16, found {precision!r}")
    wrapped = AutocastHeads(network, device_type=device.type, dtype=dtype)  # type: ignore[arg-type]
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=list(feature_map_scales), base_anchor_shapes=shapes
    )
    detector = NoduleDetector(
        network=wrapped,
        anchor_generator=anchors,
        spatial_dims=3,
        num_classes=network.num_classes,
        size_divisible=network.size_divisible,
    )
    detector.set_target_keys(box_key=BOX_KEY, label_key=LABEL_KEY)
    detector.set_atss_matcher(num_candidates=atss_candidates, center_in_gt=False)
    if cls_loss == "hard_negative":
        detector.set_hard_negative_sampler(
            batch_size_per_image=hard_negatives_per_image,
            positive_fraction=positive_fraction,
            pool_size=20,
            min_neg=16,
        )
    elif cls_loss == "focal":
        from monai.losses import FocalLoss

        detector.fg_bg_sampler = None
        detector.set_cls_loss(FocalLoss(reduction="mean", gamma=2.0))
    else:
        raise InputError(f"cls_loss: expected hard_negative or focal, found {cls_loss!r}")
    detector.set_box_selector_parameters(
        score_thresh=score_thresh,
        topk_candidates_per_level=topk_candidates_per_level,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_image,
    )
    detector.set_sliding_window_inferer(
        roi_size=list(roi_size),
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        mode="constant",
        device="cpu",
        sw_device=device,
    )
    return detector.to(device)
