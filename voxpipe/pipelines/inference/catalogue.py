"""``voxpipe models``: a catalogue of public models, downloaded on request into a cache, verified, safely unpacked.

Each entry names where its files come from (the publisher's own URLs), its licence, its classes and
size, and a hash where the publisher gives one (the Model Zoo's SHA-1 of each bundle zip, from its
``models/model_info.json``, and the MD5 of each weights file, from the bundle's ``large_files.yml``). Where none is published
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

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxpipe.errors import InputError
from voxpipe.pipelines.inference.downloads import (
    DEADLINE_S,
    HASHES,
    cache_lock,
    check_zip,
    digest,
    fetch,
    file_name,
    move_aside,
    read_hashes,
    record_hash,
)
from voxpipe.pipelines.inference.models import MANIFEST

logger = logging.getLogger(__name__)

_TS = "https://github.com/wasserth/TotalSegmentator/releases/download"
_ZOO_WEIGHTS = "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo"
_ZOO_BUNDLES = (
    "https://api.ngc.nvidia.com/v2/models/nvidia/monaihosting"  # as models/model_info.json publishes them
)


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


def _zoo_bundle(name: str, version: str, checksum: str) -> Download:
    """A Model Zoo bundle zip at the source its ``models/model_info.json`` names, with the SHA-1
    checksum published there (``<name>_v<version>``'s ``checksum``)."""
    return Download(f"{_ZOO_BUNDLES}/{name.lower()}/versions/{version}/files/{name}_v{version}.zip", checksum)


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
                _zoo_bundle(
                    "wholeBody_ct_segmentation", "0.2.5", "sha1:d3be077219fea4ac9630efddd81c19e0676bf206"
                ),
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
                _zoo_bundle(
                    "spleen_ct_segmentation", "0.5.9", "sha1:8e99230050906d0d3cec484010598aa138201892"
                ),
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
                _zoo_bundle(
                    "lung_nodule_ct_detection", "0.6.8", "sha1:1abae7a9379861c477f7b189e0171cfcd71370b0"
                ),
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


def fetch_file(
    download: Download,
    cache: Path,
    *,
    mirror: str | None = None,
    offline: bool = False,
    deadline_s: float = DEADLINE_S,
) -> tuple[Path, str, bool]:
    """The checked local copy of one download (fetched, resumed, or copied in by hand): its path, its
    SHA-256, and whether its hash may be recorded as the publisher's (fetched from the publisher's
    own URL now, no hash published, none recorded). Call under :func:`cache_lock`.

    Raises:
        InputError: offline and missing, the download failed or was cut short (``.part`` kept), or the
        file fails a check (not a zip, a hash that differs: moved aside to ``<name>.bad``, named).
    """
    name = file_name(download.url)
    folder = cache / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    target, part = folder / name, folder / f"{name}.part"
    url = f"{mirror.rstrip('/')}/{name}" if mirror else download.url
    fetched = False
    if not target.is_file():
        if offline:
            raise InputError(
                f"{str(target)!r}: expected the file {name}, found none (offline)",
                hint=f"fetch {download.url} on a machine with internet access and copy it to {target}",
            )
        fetch(url, part, deadline_s=deadline_s)
        part.replace(target)
        fetched = True
    if download.path is None:
        why = check_zip(target)
        if why:
            raise move_aside(target, f"expected a zip archive, found {why}", source=url)
    sha256 = digest(target, "sha256")
    if download.hash:
        kind, expected = download.hash.split(":", 1)
        found = sha256 if kind == "sha256" else digest(target, kind)
        if found != expected:
            raise move_aside(
                target,
                f"expected {kind} {expected} (published with {download.url}), found {found}",
                source=url,
            )
        return target, sha256, False
    recorded = read_hashes(cache).get(name)
    if recorded and recorded != sha256:
        error = move_aside(
            target,
            f"expected SHA-256 {recorded} (recorded at its first download from the publisher), found {sha256}",
            source=url,
        )
        error.hint = (
            f"run the command again to download it anew; if the publisher changed the file, remove "
            f"{name!r} from {cache / HASHES} to accept the new one"
        )
        raise error
    if not recorded and not (fetched and not mirror):
        logger.warning(
            "%s: no hash is published and none recorded; %s bytes are not recorded as the publisher's",
            name,
            "a mirror's" if mirror else "a hand-copied file's",
        )
    return target, sha256, bool(fetched and not mirror and not recorded)


def _record(cache: Path, path: Path, sha256: str) -> None:
    record_hash(cache, path.name, sha256)
    logger.warning("%s: no hash is published; recorded SHA-256 %s", path.name, sha256)


def _extract(path: Path, staging: Path) -> None:
    """Unpack a checked zip; an archive refused as unsafe is moved aside (named) before the error."""
    from voxpipe.errors import BundleError
    from voxpipe.pipelines.bundles.export import safe_extract_zip

    try:
        safe_extract_zip(path, staging)
    except BundleError as error:  # (no room to unpack is an OutputError: the file is kept)
        bad = path.with_name(path.name + ".bad")
        path.replace(bad)
        error.args = (f"{error.args[0]}; moved to {bad.name}",)
        raise


def pull(
    name: str,
    cache: str | os.PathLike[str],
    *,
    mirror: str | None = None,
    offline: bool = False,
    weights: str | os.PathLike[str] | None = None,
    deadline_s: float = DEADLINE_S,
) -> Path:
    """Download, verify and unpack one catalogue model into ``<cache>/<name>``; its folder. A
    TotalSegmentator task goes into TotalSegmentator's weights folder (``weights``, default the one it
    uses on this machine), its downloads kept in ``<cache>/downloads``. One pull at a time per cache.

    ``mirror`` replaces the publisher's URL by ``<mirror>/<file name>`` (a local copy, a test server);
    its bytes are checked against published and recorded hashes but never recorded as the publisher's.
    Raises:
        InputError: an unknown name or a download/hash failure; BundleError: an unsafe or unexpected
        archive; OutputError: no room to unpack it.
    """
    entry = model(name)
    root = Path(cache)
    with cache_lock(root):
        if entry.kind == "totalseg":
            return pull_totalseg(entry, root, weights, mirror=mirror, offline=offline, deadline_s=deadline_s)
        return _pull_into_cache(entry, root, mirror=mirror, offline=offline, deadline_s=deadline_s)


def _pull_into_cache(
    entry: Model, root: Path, *, mirror: str | None, offline: bool, deadline_s: float
) -> Path:
    from voxpipe.transforms.files import write_text_atomic

    final = root / entry.name
    if (final / MANIFEST).is_file():
        logger.info("%s: already in %s", entry.name, final)
        return final
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=root))
    try:
        files, to_record = [], []
        for download in entry.downloads:
            path, sha256, record = fetch_file(
                download, root, mirror=mirror, offline=offline, deadline_s=deadline_s
            )
            files.append(
                {"url": download.url, "file": path.name, "sha256": sha256, "published": download.hash}
            )
            if download.path is None:
                _extract(path, staging)
            else:
                (staging / download.path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, staging / download.path)
            if record:
                to_record.append((path, sha256))
        manifest = _manifest(entry, staging)
        manifest["files"] = files
        write_text_atomic(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for path, sha256 in to_record:  # only files that passed every check become trusted
        _record(root, path, sha256)
    return final


def pull_totalseg(
    entry: Model,
    cache: Path,
    weights: str | os.PathLike[str] | None,
    *,
    mirror: str | None,
    offline: bool,
    deadline_s: float = DEADLINE_S,
) -> Path:
    """A TotalSegmentator task's models into its weights folder, as its own downloader lays them out
    (``<weights>/<DatasetNNN_name>/...``); models already there are kept. The weights folder."""
    from voxpipe.errors import BundleError
    from voxpipe.pipelines.inference.totalseg.weights import weights_root

    root = Path(weights) if weights is not None else weights_root()
    root.mkdir(parents=True, exist_ok=True)
    for download, dataset in zip(entry.downloads, entry.parts, strict=True):
        if (root / dataset).is_dir() and any((root / dataset).glob("*__*__*/plans.json")):
            logger.info("%s: already in %s", dataset, root)
            continue
        path, sha256, record = fetch_file(
            download, cache, mirror=mirror, offline=offline, deadline_s=deadline_s
        )
        staging = Path(tempfile.mkdtemp(prefix=f".{dataset}.", dir=root))
        try:
            _extract(path, staging)
            if not any((staging / dataset).glob("*__*__*/plans.json")):
                bad = path.with_name(path.name + ".bad")
                path.replace(bad)
                raise BundleError(
                    f"{str(path)!r}: expected TotalSegmentator's {dataset}/<trainer>__<plans>__<configuration>/"
                    f"plans.json in the archive, found {sorted(p.name for p in staging.iterdir())[:5]}; "
                    f"moved to {bad.name}"
                )
            if (root / dataset).exists():
                shutil.rmtree(root / dataset)
            (staging / dataset).rename(root / dataset)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if record:
            _record(cache, path, sha256)
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
    hashes = read_hashes(cache) if cache is not None else {}
    for download in entry.downloads:
        name = file_name(download.url)
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
