"""Download and unpack Medical Segmentation Decathlon archives, verified and all-or-nothing.

MONAI's ``download_url`` (checksum) and ``extractall`` (which refuses absolute paths, ``..`` and
links in archives) do the work, with the URL/MD5 table of its ``DecathlonDataset`` (all ten tasks). What is
added: extraction into a temporary folder that is renamed into place only when complete (an
interrupted run leaves no half dataset that a later training would use), a check that the archive
really holds ``<task>/dataset.json``, and errors that say what to do.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from monai.apps import DecathlonDataset
from monai.apps.utils import download_url, extractall

from voxpipe.errors import InputError

logger = logging.getLogger(__name__)

# The archives of all ten tasks, as MONAI's DecathlonDataset lists them (the official tarballs, mirrored).
MSD_ARCHIVES: dict[str, tuple[str, str]] = {
    task: (url, DecathlonDataset.md5[task]) for task, url in DecathlonDataset.resource.items()
}


def download_msd(
    task: str,
    root: str | os.PathLike[str],
    *,
    url: str | None = None,
    md5: str | None = None,
    keep_archive: bool = False,
    progress: bool = True,
) -> Path:
    """Download ``task`` into ``root/<task>`` (MSD layout) and return that folder.

    Args:
        task: an :data:`MSD_ARCHIVES` key, or any name when ``url`` and ``md5`` are given.
        root: parent folder of the dataset.
        url: override the archive URL (a mirror, or ``file://`` for a local copy).
        md5: override the expected MD5 (required with a ``url`` for an unknown task).
        keep_archive: keep ``root/<task>.tar`` after extraction.
        progress: progress bar while downloading.

    Raises:
        InputError: unknown task, download failure, checksum mismatch, unsafe or incomplete archive.
    """
    if task not in MSD_ARCHIVES and not (url and md5):
        raise InputError(
            f"MSD task: expected one of {sorted(MSD_ARCHIVES)} (or --url with --md5), found {task!r}"
        )
    default_url, default_md5 = MSD_ARCHIVES.get(task, ("", ""))
    url, md5 = url or default_url, md5 or default_md5
    root = Path(root)
    target = root / task
    if (target / "dataset.json").is_file():
        logger.info("%s already holds %s; nothing downloaded", target, task)
        return target
    if target.exists():
        raise InputError(
            f"{str(target)!r}: exists without dataset.json (an earlier partial copy?); remove it and retry"
        )
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"{task}.tar"
    try:
        download_url(url, archive, hash_val=md5, hash_type="md5", progress=progress)
    except Exception as error:  # urllib, hash and permission errors all mean the same to the user
        raise InputError(
            f"{url}: download of {task} to {str(archive)!r} failed ({type(error).__name__}: {error}); "
            "check the network or pass --url to a mirror or a local copy"
        ) from error
    staging = Path(tempfile.mkdtemp(prefix=f".{task}.", dir=root))
    try:
        try:
            extractall(archive, staging, has_base=False)
        except ValueError as error:  # MONAI's traversal / link refusal
            raise InputError(f"{str(archive)!r}: refusing to extract an unsafe archive ({error})") from error
        except Exception as error:
            raise InputError(f"{str(archive)!r}: could not extract ({error})") from error
        extracted = staging / task
        if not (extracted / "dataset.json").is_file():
            found = sorted(p.name for p in staging.iterdir())
            raise InputError(
                f"{str(archive)!r}: expected {task}/dataset.json inside, found top-level entries {found}"
            )
        os.replace(extracted, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    logger.info("extracted %s to %s", task, target)
    return target
