"""Run nnunetv2 2.8.1's own nnUNetPredictor on a model folder and images; the test oracle for
voxpipe's nnU-Net path (tests/test_nnunet_predict.py runs this file in a child process whose
``sys.path`` holds the oracle's packages: ``make oracle`` installs them into ``.oracle/``).

    python tests/oracles/nnunet_predict.py MODEL_FOLDER OUT.npz IMAGE [IMAGE...] [--mirroring] [--step 0.5]
        [--gpu-arithmetic] [--probabilities]

``--gpu-arithmetic``: nnU-Net's CUDA path run on the CPU: its predictor enters ``torch.autocast`` only
on CUDA (``dummy_context`` elsewhere); here that context is fp16 autocast on the CPU, so the network
gives float16 and nnU-Net's own window arithmetic (mirroring sum, Gaussian product, accumulation)
runs in float16 as it does on a GPU.

Writes the segmentation (nnU-Net's array order) and the fold-averaged logits on the preprocessed grid.
The network is built by dynamic-network-architectures and handed over with ``manual_initialization``
(nnU-Net's trainer lookup imports every trainer module and its augmentation packages).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pydoc
from pathlib import Path

import numpy as np
import torch


def _predictor(folder: Path, args: argparse.Namespace):
    """nnUNetPredictor for a model folder, its network built from the plans (input channels as
    nnU-Net's ``determine_num_input_channels`` counts them)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(json.loads((folder / "plans.json").read_text()))
    dataset = json.loads((folder / "dataset.json").read_text())
    checkpoints = sorted(folder.glob("fold_*/checkpoint_final.pth"))
    loaded = [torch.load(c, map_location="cpu", weights_only=False) for c in checkpoints]
    configuration = plans.get_configuration(loaded[0]["init_args"]["configuration"])
    labels = plans.get_label_manager(dataset)
    kwargs = dict(configuration.network_arch_init_kwargs)
    for key in configuration.network_arch_init_kwargs_req_import:
        if kwargs.get(key) is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    module, name = configuration.network_arch_class_name.rsplit(".", 1)
    channels = len(dataset["channel_names"])
    if configuration.previous_stage_name is not None:
        channels += len(labels.foreground_labels)
    network = getattr(importlib.import_module(module), name)(
        input_channels=channels,
        num_classes=labels.num_segmentation_heads,
        deep_supervision=False,
        **kwargs,
    )
    predictor = nnUNetPredictor(
        tile_step_size=args.step,
        use_gaussian=True,
        use_mirroring=args.mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network,
        plans,
        configuration,
        [c["network_weights"] for c in loaded],
        dataset,
        loaded[0]["trainer_name"],
        loaded[0]["inference_allowed_mirroring_axes"],
    )
    return predictor, plans


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("out")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--mirroring", action="store_true")
    parser.add_argument("--step", type=float, default=0.5)
    parser.add_argument("--gpu-arithmetic", action="store_true")
    parser.add_argument("--probabilities", action="store_true", help="also nnU-Net's exported probabilities")
    args = parser.parse_args()
    if args.gpu_arithmetic:
        import nnunetv2.inference.predict_from_raw_data as raw

        raw.dummy_context = lambda: torch.autocast("cpu", dtype=torch.float16)

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    predictor, plans = _predictor(Path(args.folder), args)
    image, properties = plans.image_reader_writer_class().read_images(args.images)
    previous = None
    if predictor.configuration_manager.previous_stage_name:  # a cascade: nnU-Net's first stage first
        folder = Path(args.folder)
        trainer, plans_name, _ = folder.name.split("__")
        first, _ = _predictor(
            folder.parent / f"{trainer}__{plans_name}__{predictor.configuration_manager.previous_stage_name}",
            args,
        )
        # as nnU-Net reads the first stage's written prediction back: float32 (read_seg)
        previous = first.predict_single_npy_array(image, dict(properties), None, None, False)[None].astype(
            np.float32
        )
    logits = None
    if previous is None:  # the fold-averaged logits on nnU-Net's own preprocessed grid, for the test
        import copy

        preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
        data, _, _ = preprocessor.run_case_npy(
            image,
            None,
            copy.deepcopy(properties),
            predictor.plans_manager,
            predictor.configuration_manager,
            predictor.dataset_json,
        )
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).numpy()
    segmentation = predictor.predict_single_npy_array(image, properties, previous, None, False)
    if plans.image_reader_writer_class is not SimpleITKIO:  # the reader's own writer: back to file order
        written = Path(args.out).with_suffix(".nii.gz")
        plans.image_reader_writer_class().write_seg(np.asarray(segmentation), str(written), properties)
        reread = SimpleITKIO().read_seg(str(written))[0][0]
        segmentation = reread
    extra = {} if logits is None else {"logits": logits}
    if args.probabilities:  # what nnUNetv2_predict --save_probabilities writes into <case>.npz
        _, probabilities = predictor.predict_single_npy_array(image, properties, previous, None, True)
        extra["probabilities"] = np.asarray(probabilities)
    np.savez_compressed(args.out, segmentation=np.asarray(segmentation), **extra)


if __name__ == "__main__":
    main()
