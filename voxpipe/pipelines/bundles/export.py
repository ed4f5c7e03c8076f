"""Package a trained bundle as one zip, and open such a zip for running.

MONAI can download and extract a bundle zip (``monai.bundle.download(url=...)``) but has no
command that writes one; a Model Zoo zip is ``<name>/configs/...``, ``<name>/models/model.pt``,
``<name>/docs/...``. :func:`export_bundle` writes exactly that layout, with the trained weights
as ``models/model.pt`` (checked to load with ``torch.load(weights_only=True)``) and the SHA-256 of
every other file recorded in ``configs/metadata.json`` under ``checksums``. :func:`open_bundle_zip`
extracts one (MONAI's ``extractall``) and verifies those checksums before anything runs.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from voxpipe.errors import BundleError, OutputError
from voxpipe.networks.transfer import load_torch_file
from voxpipe.transforms.files import atomic_path, sha256_file

PACKAGED = ("configs", "docs")
SKIPPED_SUFFIXES = (".pyc",)


def export_bundle(
    bundle_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> Path:
    """Write ``output`` (a .zip): ``<name>/configs/``, ``<name>/docs/``, ``<name>/models/model.pt``.

    Args:
        bundle_dir: the bundle folder.
        output: zip file to write (atomically).
        weights: trained weights (default ``<bundle_dir>/models/model.pt``).
        name: folder name inside the zip (default: the bundle folder's name).

    Raises:
        BundleError: no metadata.json, no weights, or weights that are not a plain state dict.
    """
    root = Path(bundle_dir)
    name = name or root.resolve().name
    metadata_path = root / "configs" / "metadata.json"
    if not metadata_path.is_file():
        raise BundleError(f"{str(metadata_path)!r}: expected the bundle's metadata.json, found no file")
    weights = Path(weights) if weights else root / "models" / "model.pt"
    if not weights.is_file():
        raise BundleError(
            f"{str(weights)!r}: expected trained weights to package, found no file",
            hint="pass --weights FILE",
        )
    state = load_torch_file(
        weights
    )  # weights_only=True; a file that needs pickled code is refused, naming it
    if not isinstance(state, dict):
        raise BundleError(f"{str(weights)!r}: expected a state dict, found {type(state).__name__}")

    files = {
        path.relative_to(root).as_posix(): path
        for folder in PACKAGED
        for path in sorted((root / folder).rglob("*"))
        if path.is_file() and path.suffix not in SKIPPED_SUFFIXES and path != metadata_path
    }
    files["models/model.pt"] = weights
    metadata = json.loads(metadata_path.read_text())
    metadata["checksums"] = {
        "algorithm": "sha256",
        "files": {rel: sha256_file(path) for rel, path in files.items()},
    }
    output = Path(output)
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rel, path in files.items():
            archive.write(path, f"{name}/{rel}")
        archive.writestr(f"{name}/configs/metadata.json", json.dumps(metadata, indent=4))
    return output


#: Far above any real bundle or model archive (weights included): a zip bomb is refused before the
#: free-space check. ``$VOXPIPE_MAX_UNZIP_BYTES`` changes it.
MAX_UNCOMPRESSED_BYTES = int(os.environ.get("VOXPIPE_MAX_UNZIP_BYTES", 64 * 2**30))


def safe_extract_zip(archive: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Extract ``archive`` into ``target`` after checking every member name and the total size.

    Why our own: ``zipfile`` drops ``..`` parts silently and MONAI's ``extractall`` raises a bare
    ``ValueError``; a bundle is a stranger's file, so a member that would land outside ``target``
    (absolute, ``..``, a drive letter), a symbolic link, or a total size past
    :data:`MAX_UNCOMPRESSED_BYTES` is refused naming the archive and the member, before anything is
    written; so is a total (as the members declare it: ``zipfile`` stops a member at its declared
    size) above the free space where it is unpacked.

    Raises:
        BundleError: not a zip, or one of the members above; OutputError: no room to unpack it.
    """
    import stat

    archive = Path(archive)
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            total = 0
            for member in members:
                name = member.filename
                parts = Path(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise BundleError(
                        f"{str(archive)!r}: member {name!r} would be written outside the folder it is "
                        "extracted to; expected relative paths inside the bundle"
                    )
                if stat.S_ISLNK(member.external_attr >> 16):
                    raise BundleError(
                        f"{str(archive)!r}: member {name!r} is a symbolic link; expected plain files"
                    )
                total += member.file_size
            if total > MAX_UNCOMPRESSED_BYTES:
                raise BundleError(
                    f"{str(archive)!r}: members add up to {total:,} bytes uncompressed; expected at most "
                    f"{MAX_UNCOMPRESSED_BYTES:,} (a zip bomb?)"
                )
            Path(target).mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(target).free
            if total > free:
                raise OutputError(
                    f"{str(target)!r}: unpacking {archive.name} needs {total:,} bytes (as its members "
                    f"declare), {free:,} free",
                    hint="free disk space there, or pull into another cache (--models-cache)",
                )
            zipped.extractall(target)
    except zipfile.BadZipFile as error:
        raise BundleError(f"{str(archive)!r}: expected a zip archive, found {error}") from error
    except OSError as error:
        raise BundleError(f"{str(archive)!r}: could not be extracted ({error.strerror or error})") from error


def open_bundle_zip(archive: str | os.PathLike[str], *, into: str | os.PathLike[str] | None = None) -> Path:
    """Extract a bundle zip (one top folder) and verify the checksums in its metadata; return the bundle folder.

    Raises:
        BundleError: not one top folder with configs/metadata.json, or a file whose SHA-256 differs.
    """
    if into is None:  # a folder of this process's own, removed when it exits or the zip is refused
        target = Path(tempfile.mkdtemp(prefix="voxpipe-bundle-"))
        atexit.register(shutil.rmtree, target, ignore_errors=True)
        try:
            return _open_bundle_zip(archive, target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    return _open_bundle_zip(archive, Path(into))


def _open_bundle_zip(archive: str | os.PathLike[str], target: Path) -> Path:
    safe_extract_zip(archive, target)
    tops = [p for p in target.iterdir() if (p / "configs" / "metadata.json").is_file()]
    if len(tops) != 1:
        raise BundleError(
            f"{str(archive)!r}: expected one bundle folder with configs/metadata.json, found {len(tops)}"
        )
    folder = tops[0]
    checksums = (
        json.loads((folder / "configs" / "metadata.json").read_text()).get("checksums", {}).get("files", {})
    )
    for rel, expected in checksums.items():
        path = folder / rel
        found = sha256_file(path) if path.is_file() else "no file"
        if found != expected:
            raise BundleError(f"{str(archive)!r}: {rel}: expected SHA-256 {expected}, found {found}")
    return folder
