"""``voxpipe models``: a catalogue of public models, downloaded on request into a cache, verified, safely unpacked.

Each entry names where its files come from (the publisher's own URLs), its licence, its classes and
size, and a hash where the publisher gives one (the Model Zoo's MD5s). Where none is published
(TotalSegmentator's release archives) the SHA-256 of the first download is recorded in the cache
(``hashes.json``) and shown, and later downloads must match it.

Downloads resume (HTTP ``Range``) from a ``.part`` file, are checked, and zip archives are unpacked
with :func:`voxpipe.pipelines.bundles.export.safe_extract_zip` (no member may land outside the
cache, no links, no zip bombs) into a staging folder renamed into place when complete. Offline, a
file copied by hand into ``<cache>/downloads/`` is used as it is (checked the same way); the error
when a download fails names the URL to fetch and the path to put it at.

A model made of several nnU-Net models (TotalSegmentator's ``total``: five parts, 117 classes) gets a
``voxpipe-model.json`` manifest: its parts in order, each part's label → merged label, and the merge
rule (later parts overwrite where they found something, as TotalSegmentator merges them).

Why our own: MONAI's ``download_url`` neither resumes nor records a hash it was not given, and
TotalSegmentator's downloader extracts without checking member paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxpipe.errors import InputError
from voxpipe.pipelines.inference.models import MANIFEST

logger = logging.getLogger(__name__)

_TS = "https://github.com/wasserth/TotalSegmentator/releases/download"
_ZOO_WEIGHTS = "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo"
_ZOO_BUNDLES = "https://github.com/Project-MONAI/model-zoo/releases/download/hosting_storage_v1"


@dataclass(frozen=True)
class Download:
    """One file of a model: where it comes from, the publisher's hash if any, and where it goes."""

    url: str
    hash: str | None = None  # "md5:<hex>" or "sha256:<hex>", as published
    path: str | None = None  # for a plain file: its place in the model folder; None: a zip to unpack


@dataclass(frozen=True)
class Model:
    name: str
    kind: str  # "nnunet" (one model folder), "nnunet-parts" (several, merged), "bundle" (MONAI bundle)
    source: str
    licence: str
    classes: str
    size: str
    downloads: tuple[Download, ...]
    step: float = 0.5
    notes: str = ""
    parts: tuple[str, ...] = field(default_factory=tuple)  # the parts' dataset folders, in merge order


def _ts(folder: str, version: str = "v2.0.0-weights") -> Download:
    return Download(f"{_TS}/{version}/{folder}.zip")


_TS_LICENCE = "Apache-2.0 (TotalSegmentator's open models)"
_TS_SOURCE = "TotalSegmentator 2.18.0 (Wasserthal et al.), github.com/wasserth/TotalSegmentator"


def _totalseg_models() -> list[Model]:
    """One entry per open TotalSegmentator task: the release zips of its models and its crop models
    (with ``--fast``/``--fastest``'s where it has them), unpacked into TotalSegmentator's own weights
    folder, where ``voxpipe infer TASK`` and TotalSegmentator itself find them."""
    from voxpipe.pipelines.inference.totalseg import tasks

    entries = []
    for name in tasks.OPEN_TASKS:
        ids = list(tasks.models_of(name))
        for mode in ({"fast": True}, {"fastest": True}):
            try:
                ids += [i for i in tasks.task(name, **mode).task_ids if i not in ids]
            except InputError:
                pass
        ids = [i for i in ids if tasks.release(i) is not None]
        labels = tasks.classes(name)
        entries.append(
            Model(
                name,
                "totalseg",
                _TS_SOURCE,
                _TS_LICENCE,
                f"{len(labels)} structures: {', '.join(list(labels.values())[:4])}{', ...' if len(labels) > 4 else ''}",
                f"{len(ids)} nnU-Net model(s)",
                tuple(Download(f"{_TS}/{tasks.release(i)}/{tasks.dataset_folder(i)}.zip") for i in ids),
                notes="run as TotalSegmentator runs it (voxpipe infer " + name + " ...); weights go to "
                "TotalSegmentator's own folder ($TOTALSEG_WEIGHTS_PATH, else ~/.totalsegmentator/nnunet/results)",
                parts=tuple(tasks.dataset_folder(i) for i in ids),
            )
        )
    return entries


CATALOGUE: dict[str, Model] = {
    m.name: m
    for m in (
        *_totalseg_models(),
        Model(
            "wholeBody_ct_segmentation",
            "bundle",
            "MONAI Model Zoo 0.2.5",
            "Apache-2.0 (bundle); the weights' data licence is the bundle's docs/data_license.txt",
            "104 structures (TotalSegmentator v1 classes), 1.5 mm SegResNet",
            "bundle + 2 weights files, about 300 MB",
            (
                Download(f"{_ZOO_BUNDLES}/wholeBody_ct_segmentation_v0.2.5.zip"),
                Download(
                    f"{_ZOO_WEIGHTS}/model_wholebody_ct_segmentation.pt",
                    "md5:aded45dea52f9c00b37922bcd0a98502",
                    "models/model.pt",
                ),
                Download(
                    f"{_ZOO_WEIGHTS}/model_lowres_wholebody_ct_segmentation.pt",
                    "md5:dbdebeae650f4fb5ea7f4ad01e0d2431",
                    "models/model_lowres.pt",
                ),
            ),
        ),
        Model(
            "spleen_ct_segmentation",
            "bundle",
            "MONAI Model Zoo 0.5.9",
            "Apache-2.0 (bundle); the weights' data licence is the bundle's docs/data_license.txt",
            "spleen (MSD Task09), UNet",
            "bundle + weights, about 20 MB",
            (
                Download(f"{_ZOO_BUNDLES}/spleen_ct_segmentation_v0.5.9.zip"),
                Download(
                    f"{_ZOO_WEIGHTS}/model_spleen_ct_segmentation_v1.pt",
                    "md5:be4fa95e236df91766147c112ee6fafd",
                    "models/model.pt",
                ),
            ),
        ),
        Model(
            "lung_nodule_ct_detection",
            "bundle",
            "MONAI Model Zoo 0.6.8",
            "Apache-2.0 (bundle); the weights' data licence is the bundle's docs/data_license.txt",
            "lung nodule boxes (LUNA16), RetinaNet",
            "bundle + weights, about 80 MB",
            (
                Download(f"{_ZOO_BUNDLES}/lung_nodule_ct_detection_v0.6.8.zip"),
                Download(
                    f"{_ZOO_WEIGHTS}/model_lung_nodule_ct_detection.pt",
                    "md5:b2e732a7c2786e2f8398fa45293b1e73",
                    "models/model.pt",
                ),
            ),
        ),
    )
}


def default_cache(environ: Mapping[str, str] | None = None) -> Path:
    """``$VOXPIPE_MODELS``, else ``$XDG_CACHE_HOME/voxpipe/models``, else ``~/.cache/voxpipe/models``."""
    environ = os.environ if environ is None else environ
    if environ.get("VOXPIPE_MODELS"):
        return Path(environ["VOXPIPE_MODELS"]).expanduser()
    base = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "voxpipe" / "models"


def model(name: str) -> Model:
    if name not in CATALOGUE:
        raise InputError(
            f"model: expected one of {sorted(CATALOGUE)}, found {name!r}", hint="voxpipe models list"
        )
    return CATALOGUE[name]


def _file_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _digest(path: Path, kind: str) -> str:
    digest = hashlib.new(kind)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, part: Path, *, timeout: float = 60.0) -> None:
    """Download ``url`` into ``part``, continuing from its current size where the server allows."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (the catalogue's https URLs, or a mirror the user names)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left to fetch: the part is complete
            return
        raise
    with response:
        resumed = response.status == 206
        with part.open("ab" if resumed else "wb") as stream:
            shutil.copyfileobj(response, stream, 1 << 20)


def _hashes(root: Path) -> dict[str, str]:
    path = root / "hashes.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def fetch_file(
    download: Download, cache: Path, *, mirror: str | None = None, offline: bool = False
) -> tuple[Path, str]:
    """The verified local copy of one download (fetched, resumed, or copied in by hand); its SHA-256.

    Raises:
        InputError: offline and missing, the download failed, or the hash does not match (named).
    """
    name = _file_name(download.url)
    folder = cache / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    target, part = folder / name, folder / f"{name}.part"
    url = f"{mirror.rstrip('/')}/{name}" if mirror else download.url
    if not target.is_file():
        if offline:
            raise InputError(
                f"{str(target)!r}: expected the file {name}, found none (offline)",
                hint=f"fetch {download.url} on a machine with internet access and copy it to {target}",
            )
        try:
            _fetch(url, part)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise InputError(
                f"{url}: download failed ({getattr(error, 'reason', error)}); {part.stat().st_size if part.exists() else 0} bytes kept in {str(part)!r}",
                hint=f"run the command again to resume, or fetch {download.url} by hand and put it at {target}",
            ) from None
        part.replace(target)
    sha256 = _digest(target, "sha256")
    if download.hash:
        kind, expected = download.hash.split(":", 1)
        found = sha256 if kind == "sha256" else _digest(target, kind)
        if found != expected:
            target.replace(folder / f"{name}.bad")
            raise InputError(
                f"{str(target)!r}: expected {kind} {expected} (published with {download.url}), found {found}; "
                f"the file was moved to {name}.bad",
                hint="download it again; if this repeats, the publisher's file changed",
            )
    else:
        recorded = _hashes(cache).get(name)
        if recorded and recorded != sha256:
            raise InputError(
                f"{str(target)!r}: expected SHA-256 {recorded} (recorded at its first download), found {sha256}",
                hint=f"remove the file and {cache / 'hashes.json'}'s entry to accept the new one",
            )
    return target, sha256


def pull(
    name: str,
    cache: str | os.PathLike[str],
    *,
    mirror: str | None = None,
    offline: bool = False,
    weights: str | os.PathLike[str] | None = None,
) -> Path:
    """Download, verify and unpack one catalogue model into ``<cache>/<name>``; its folder. A
    TotalSegmentator task goes into TotalSegmentator's weights folder (``weights``, default the one it
    uses on this machine), its downloads kept in ``<cache>/downloads``.

    ``mirror`` replaces the publisher's URL by ``<mirror>/<file name>`` (a local copy, a test server).
    Raises:
        InputError: an unknown name or a download/hash failure; BundleError: an unsafe or unexpected archive.
    """
    from voxpipe.pipelines.bundles.export import safe_extract_zip
    from voxpipe.transforms.files import write_text_atomic

    entry = model(name)
    if entry.kind == "totalseg":
        return pull_totalseg(entry, Path(cache), weights, mirror=mirror, offline=offline)
    root = Path(cache)
    final = root / name
    if (final / MANIFEST).is_file():
        logger.info("%s: already in %s", name, final)
        return final
    root.mkdir(parents=True, exist_ok=True)
    recorded = _hashes(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        files = []
        for download in entry.downloads:
            path, sha256 = fetch_file(download, root, mirror=mirror, offline=offline)
            files.append(
                {"url": download.url, "file": path.name, "sha256": sha256, "published": download.hash}
            )
            if not download.hash and path.name not in recorded:
                recorded[path.name] = sha256
                logger.warning("%s: no hash is published; recorded SHA-256 %s", path.name, sha256)
            if download.path is None:
                safe_extract_zip(path, staging)
            else:
                (staging / download.path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, staging / download.path)
        manifest = _manifest(entry, staging)
        manifest["files"] = files
        write_text_atomic(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_text_atomic(root / "hashes.json", json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    return final


def pull_totalseg(
    entry: Model, cache: Path, weights: str | os.PathLike[str] | None, *, mirror: str | None, offline: bool
) -> Path:
    """A TotalSegmentator task's models into its weights folder, as its own downloader lays them out
    (``<weights>/<DatasetNNN_name>/...``); models already there are kept. The weights folder."""
    from voxpipe.errors import BundleError
    from voxpipe.pipelines.bundles.export import safe_extract_zip
    from voxpipe.pipelines.inference.totalseg.weights import weights_root
    from voxpipe.transforms.files import write_text_atomic

    root = Path(weights) if weights is not None else weights_root()
    root.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    recorded = _hashes(cache)
    for download, dataset in zip(entry.downloads, entry.parts, strict=True):
        if (root / dataset).is_dir() and any((root / dataset).glob("*__*__*/plans.json")):
            logger.info("%s: already in %s", dataset, root)
            continue
        path, sha256 = fetch_file(download, cache, mirror=mirror, offline=offline)
        if path.name not in recorded:
            recorded[path.name] = sha256
            logger.warning("%s: no hash is published; recorded SHA-256 %s", path.name, sha256)
        staging = Path(tempfile.mkdtemp(prefix=f".{dataset}.", dir=root))
        try:
            safe_extract_zip(path, staging)
            if not any((staging / dataset).glob("*__*__*/plans.json")):
                raise BundleError(
                    f"{str(path)!r}: expected TotalSegmentator's {dataset}/<trainer>__<plans>__<configuration>/"
                    f"plans.json in the archive, found {sorted(p.name for p in staging.iterdir())[:5]}"
                )
            if (root / dataset).exists():
                shutil.rmtree(root / dataset)
            (staging / dataset).rename(root / dataset)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        write_text_atomic(cache / "hashes.json", json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    return root


def _model_folder(root: Path, dataset: str) -> Path:
    """The nnU-Net model folder (``<Trainer>__<Plans>__<configuration>``) of a dataset folder in ``root``."""
    candidates = sorted(p.parent for p in (root / dataset).glob("*__*__*/plans.json"))
    if not candidates:
        from voxpipe.errors import BundleError

        raise BundleError(
            f"{str(root / dataset)!r}: expected an nnU-Net model folder (<Trainer>__<Plans>__<configuration>/plans.json) "
            "in the archive, found none"
        )
    return candidates[0]


def _manifest(entry: Model, staging: Path) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": entry.name,
        "kind": entry.kind,
        "source": entry.source,
        "licence": entry.licence,
        "step": entry.step,
    }
    if entry.kind == "bundle":
        bundles = sorted(p.parent.parent for p in staging.glob("*/configs/metadata.json"))
        document["bundle"] = str(bundles[0].relative_to(staging)) if bundles else "."
        for download in entry.downloads:  # the weights go into the bundle folder
            if download.path is not None and bundles:
                target = bundles[0] / download.path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(staging / download.path), target)
        return document
    parts, names, offset = [], {0: "background"}, 0
    for dataset in entry.parts:
        folder = _model_folder(staging, dataset)
        labels = json.loads((folder / "dataset.json").read_text()).get("labels", {})
        own = {
            int(v): str(k)
            for k, v in labels.items()
            if not isinstance(v, list) and int(v) != 0 and k != "ignore"
        }
        mapping = {value: offset + value for value in sorted(own)}
        names.update({mapping[v]: own[v] for v in own})
        parts.append(
            {"folder": str(folder.relative_to(staging)), "labels": {str(k): v for k, v in mapping.items()}}
        )
        offset += max(own, default=0)
    document["parts"] = parts
    document["labels"] = {str(k): v for k, v in sorted(names.items())}
    document["merge"] = "in part order, each part's non-zero labels (mapped) overwrite the map"
    return document


def pulled(name: str, cache: str | os.PathLike[str]) -> Path | None:
    """The model's folder in the cache when it was pulled, else None (a TotalSegmentator task: its
    weights folder when every model of a default run is in it)."""
    entry = CATALOGUE.get(name)
    if entry is not None and entry.kind == "totalseg":
        from voxpipe.pipelines.inference.totalseg.tasks import dataset_folder, models_of
        from voxpipe.pipelines.inference.totalseg.weights import weights_root

        root = weights_root()
        needed = [dataset_folder(i) for i in models_of(name)]
        return root if all(any((root / d).glob("*__*__*/plans.json")) for d in needed) else None
    folder = Path(cache) / name
    return folder if (folder / MANIFEST).is_file() else None


def describe(entry: Model, cache: Path | None = None) -> str:
    lines = [
        f"{entry.name}: {entry.classes}",
        f"  kind: {entry.kind}; size: {entry.size}"
        + ("" if entry.kind == "totalseg" else f"; window step: {entry.step}"),
        f"  source: {entry.source}",
        f"  licence: {entry.licence}",
    ]
    hashes = _hashes(cache) if cache is not None else {}
    for download in entry.downloads:
        name = _file_name(download.url)
        hash_text = download.hash or (
            f"sha256:{hashes[name]} (recorded at first download)" if name in hashes else "none published"
        )
        lines.append(f"  file: {download.url}\n        hash: {hash_text}")
    if entry.notes:
        lines.append(f"  note: {entry.notes}")
    if cache is not None:
        where = pulled(entry.name, cache)
        lines.append(f"  pulled: {where}" if where else f"  not pulled (voxpipe models pull {entry.name})")
    return "\n".join(lines)


__all__ = [
    "CATALOGUE",
    "MANIFEST",
    "Download",
    "Model",
    "default_cache",
    "describe",
    "fetch_file",
    "model",
    "pull",
    "pulled",
]
