"""Training-loop throughput on phantoms: voxpipe's data path vs a naive Dataset + DataLoader.

Both feed the same SegResNet (the liver bundle's, ``--init-filters``), the same optimizer and loss,
batch 1 image → ``samples_per_image`` random patches, for the same number of epochs:

  (a) naive: ``torch.utils.data.Dataset`` running the whole chain (load NIfTI, orient, resample to
      1.5 × 1.5 × 2.5 mm, window, pad, random pos/neg crops, intensity augmentation) for every item,
      every epoch, with PyTorch's ``DataLoader`` (``num_workers=0``);
  (b) voxpipe: the deterministic part cached once (``cached_dataset``, MONAI ``CacheDataset``), only
      the random crops and augmentation after the cache, in MONAI's ``ThreadDataLoader`` (a
      background thread prepares the next batch while the network trains).

The phantoms are stretched onto a CT-sized grid (``--matrix`` × ``--slices``, default 512 × 512 × 300
at 0.78 × 0.78 × 1.25 mm, like a LiTS volume), so loading and resampling cost what they cost on real
scans. Prints samples/s of each (steady
state, i.e. epochs after the first, and overall including voxpipe's cache fill), and the ratios.

    python benchmarks/train_throughput.py [--cases 6] [--epochs 3] [--matrix 512] [--slices 300] [--bf16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage


def write_cases(root: Path, *, cases: int, matrix: int, slices: int) -> list[dict[str, str]]:
    """Liver phantoms stretched onto a CT-sized grid: ``matrix``² × ``slices`` at 0.78 × 0.78 × 1.25 mm.

    That is a 400 mm field of view and LiTS-like volumes (512 × 512 × 300 by default): loading and
    resampling cost what they cost on real abdominal CT, which is what the cache saves.
    """
    from voxpipe.phantoms.ct import liver_phantom
    from voxpipe.transforms.io import save_nifti

    datalist = []
    for index in range(cases):
        phantom = liver_phantom((0, index))
        factor = np.array([matrix, matrix, slices]) / np.array(phantom.image.shape)
        image = ndimage.zoom(phantom.image.astype(np.int16), factor, order=1)
        label = ndimage.zoom(phantom.label, factor, order=0)
        affine = np.diag([-0.78, -0.78, 1.25, 1.0])  # LPS-stored like most CT NIfTI files
        save_nifti(image, affine, root / f"image_{index}.nii.gz")
        save_nifti(label, affine, root / f"label_{index}.nii.gz")
        datalist.append(
            {"image": str(root / f"image_{index}.nii.gz"), "label": str(root / f"label_{index}.nii.gz")}
        )
    return datalist


def transforms(patch: list[int], samples: int) -> tuple[list, list]:
    from monai import transforms as mt

    from voxpipe.transforms.io import LoadVolumed

    keys = ["image", "label"]
    deterministic = [
        LoadVolumed(keys),
        mt.EnsureChannelFirstd(keys),
        mt.Orientationd(keys, axcodes="RAS"),
        mt.Spacingd(keys, pixdim=(1.5, 1.5, 2.5), mode=("bilinear", "nearest")),
        mt.ScaleIntensityRanged("image", a_min=-100, a_max=200, b_min=0.0, b_max=1.0, clip=True),
        mt.SpatialPadd(keys, spatial_size=patch),
    ]
    random = [
        mt.RandCropByPosNegLabeld(
            keys,
            label_key="label",
            spatial_size=patch,
            pos=2,
            neg=1,
            num_samples=samples,
            image_key="image",
            image_threshold=0,
        ),
        mt.RandScaleIntensityd("image", factors=0.1, prob=0.5),
        mt.RandShiftIntensityd("image", offsets=0.05, prob=0.5),
        mt.RandGaussianNoised("image", std=0.01, prob=0.2),
    ]
    return deterministic, random


class NaiveDataset(torch.utils.data.Dataset):
    """What many training scripts do: every item runs the whole chain, every epoch."""

    def __init__(self, datalist: list[dict[str, str]], chain) -> None:
        self.datalist = datalist
        self.chain = chain

    def __len__(self) -> int:
        return len(self.datalist)

    def __getitem__(self, index: int):
        return self.chain(dict(self.datalist[index]))


def train(loader, *, epochs: int, init_filters: int, bf16: bool) -> tuple[list[float], int]:
    """Seconds per epoch and samples per epoch of a plain training loop over ``loader``."""
    from monai.losses import DiceCELoss

    from voxpipe.networks import build_network

    torch.manual_seed(0)
    network = build_network("segresnet", out_channels=3, init_filters=init_filters)
    if bf16:
        from voxpipe.pipelines.training.trainer import CpuBf16Autocast

        network = CpuBf16Autocast(network)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    seconds, samples = [], 0
    for _ in range(epochs):
        start, samples = time.perf_counter(), 0
        for batch in loader:
            image, label = batch["image"], batch["label"]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(network(image), label)
            loss.backward()
            optimizer.step()
            samples += image.shape[0]
        seconds.append(time.perf_counter() - start)
    return seconds, samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--matrix", type=int, default=512, help="in-plane matrix of the phantoms (default 512)"
    )
    parser.add_argument("--slices", type=int, default=300, help="slices of the phantoms (default 300)")
    parser.add_argument(
        "--bf16", action="store_true", help="both loops train under CPU bf16 autocast (the bundle's cpu_bf16)"
    )
    parser.add_argument("--init-filters", type=int, default=16)
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 48])
    parser.add_argument("--samples", type=int, default=2, help="random patches per image (default 2)")
    args = parser.parse_args()

    from monai.data import ThreadDataLoader
    from monai.transforms import Compose
    from monai.utils import set_determinism

    from voxpipe.pipelines.data.caching import cached_dataset

    with tempfile.TemporaryDirectory() as folder:
        datalist = write_cases(Path(folder), cases=args.cases, matrix=args.matrix, slices=args.slices)
        deterministic, random = transforms(args.patch, args.samples)
        print(
            f"{args.cases} phantoms {args.matrix}² × {args.slices}, SegResNet {args.init_filters} filters"
            f"{' (bf16 autocast)' if args.bf16 else ''}, "
            f"patch {args.patch}, {args.samples} patches per image, {args.epochs} epochs, {torch.get_num_threads()} threads"
        )

        set_determinism(0)
        naive = torch.utils.data.DataLoader(
            NaiveDataset(datalist, Compose(deterministic + random)),
            batch_size=1,
            shuffle=True,
            collate_fn=_collate,
        )
        naive_seconds, samples = train(
            naive, epochs=args.epochs, init_filters=args.init_filters, bf16=args.bf16
        )

        set_determinism(0)
        start = time.perf_counter()
        dataset = cached_dataset(
            datalist, transform=Compose(deterministic + random), cache="memory", pixdim=(1.5, 1.5, 2.5)
        )
        cache_seconds = time.perf_counter() - start
        fast = ThreadDataLoader(
            dataset, batch_size=1, shuffle=True, num_workers=0, buffer_size=2, collate_fn=_collate
        )
        fast_seconds, _ = train(fast, epochs=args.epochs, init_filters=args.init_filters, bf16=args.bf16)

    steady_naive = samples * (args.epochs - 1) / sum(naive_seconds[1:])
    steady_fast = samples * (args.epochs - 1) / sum(fast_seconds[1:])
    overall_naive = samples * args.epochs / sum(naive_seconds)
    overall_fast = samples * args.epochs / (sum(fast_seconds) + cache_seconds)
    print(f"{'':24}{'samples/s':>10}{'s/epoch':>10}")
    print(f"{'naive Dataset':24}{steady_naive:10.2f}{np.mean(naive_seconds[1:]):10.1f}")
    print(
        f"{'voxpipe cached+thread':24}{steady_fast:10.2f}{np.mean(fast_seconds[1:]):10.1f}   (cache fill {cache_seconds:.1f} s, once)"
    )
    print(
        f"steady-state ratio {steady_fast / steady_naive:.2f}x; "
        f"over all {args.epochs} epochs incl. the cache fill {overall_fast / overall_naive:.2f}x"
    )


def _collate(items):
    """RandCropByPosNegLabeld returns a list of patches per image: flatten them into one batch."""
    from monai.data import list_data_collate

    return list_data_collate(items)


if __name__ == "__main__":
    main()
