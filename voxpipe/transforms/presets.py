"""Named transform chains and the helper bundles use to join transform lists.

Bundles list MONAI transforms in YAML; :func:`compose` joins several such lists (e.g. the shared
deterministic preprocessing and the training augmentations) into one flat ``Compose``. It must be
flat: ``CacheDataset`` caches everything before the first random transform, and a nested
``Compose`` counts as random, so nesting would silently disable caching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai.transforms import Compose


def compose(parts: Sequence[Sequence[Callable[..., Any]] | Callable[..., Any]], **kwargs: Any) -> Compose:
    """One flat ``Compose`` from lists of transforms (or single transforms, or ``Compose``s), in order."""
    flat: list[Callable[..., Any]] = []
    for part in parts:
        if isinstance(part, Compose):
            flat.extend(part.flatten().transforms)
        elif isinstance(part, Sequence):
            flat.extend(part)
        else:
            flat.append(part)
    return Compose(flat, **kwargs)
