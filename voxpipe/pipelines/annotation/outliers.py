"""Which pre-labelled cases the model probably cannot read: out-of-distribution scans go to the top.

Entropy ranks what the model is unsure about *where it sees something*. A scan it cannot read at all
(another modality, intensities scaled or shifted, an empty or truncated field of view) often gets a
confident, wrong answer: little or no foreground, low entropy, last on the list. Two signals catch it,
each compared with a reference and written down with its number:

* **intensities**: the scan's intensity histogram (64 bins over the batch's 0.5–99.5 % range)
  against the element-wise median of the batch's histograms, by Jensen-Shannon divergence (bits:
  0 the same, 1 no overlap; above :data:`JS_LIMIT` it is another kind of image: another modality, a
  wrong rescale; a different field of view or noise moves it far less); and with a training
  fingerprint, the median intensity inside the predicted foreground against the training
  foreground's 0.5–99.5 % range (more than one range-width outside it);
* **predicted volumes** per organ (lesions may be absent or of any size): nothing predicted where the
  reference has it, or a volume outside [min / 3, 3 × max] of the training fingerprint, or a
  log-volume robust z-score above the limit (a factor of about 7 from the batch median).

The reference is the bundle's training ``fingerprint.json`` when there is one (``voxpipe plan``
writes it into the bundle folder: foreground intensities and structure volumes of the training
labels), else the batch being pre-labelled (its median case), which needs at least
:data:`MIN_BATCH` cases. Why our own: MONAI Label's active learning ranks by MC-dropout or TTA
variance only and has no out-of-distribution check.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxpipe.metrics.lesions import is_lesion_name

LIMIT = 4.0  # robust z-score above which a case is out of distribution
MIN_BATCH = 4  # cases needed for a batch reference
PERCENTILES = (5.0, 50.0, 95.0)
SAMPLE = 200_000  # voxels per case kept for the comparison
BINS = 64
JS_LIMIT = (
    0.5  # bits: intensity histograms this far from the batch's median histogram are another kind of image
)
LOG_VOLUME_FLOOR = 0.5  # natural-log units: volumes within a factor e^(LIMIT * 0.5) = 7.4 of the median pass
VOLUME_FACTOR = 3.0


def intensity_signature(array: np.ndarray, foreground: np.ndarray | None = None) -> dict[str, Any]:
    """A case's intensities, summarised: ``sample`` (a strided sample of at most :data:`SAMPLE` voxels,
    sorted, for the histogram comparison), ``percentiles`` (:data:`PERCENTILES`, for the reason text)
    and ``foreground`` (the median inside the predicted foreground, None when empty: what a training
    fingerprint's foreground intensities describe)."""
    flat = np.asarray(array).reshape(-1)
    step = max(1, flat.size // SAMPLE)
    sample = np.sort(flat[::step].astype(np.float32))
    inside = None
    if foreground is not None and np.shape(foreground) == np.shape(array) and np.any(foreground):
        inside = float(np.median(np.asarray(array)[np.asarray(foreground)]))
    return {
        "sample": sample,
        "percentiles": [float(v) for v in np.percentile(sample, PERCENTILES)],
        "foreground": inside,
    }


def _histograms(samples: Sequence[np.ndarray]) -> np.ndarray:
    """Normalised histograms of :data:`BINS` bins over the batch's 0.5–99.5 % range (values clipped into it)."""
    low = min(float(np.percentile(s, 0.5)) for s in samples)
    high = max(float(np.percentile(s, 99.5)) for s in samples)
    edges = np.linspace(low, high if high > low else low + 1.0, BINS + 1)
    counts = np.stack([np.histogram(np.clip(s, edges[0], edges[-1]), bins=edges)[0] for s in samples])
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def _js_bits(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0: same distribution, 1: no overlap)."""
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        keep = a > 0
        return float(np.sum(a[keep] * np.log2(a[keep] / m[keep])))

    return (kl(p) + kl(q)) / 2


def load_fingerprint(bundle: str | Path) -> dict[str, Any] | None:
    """The training fingerprint beside a bundle's configs (``fingerprint.json``), or None."""
    for candidate in (Path(bundle) / "fingerprint.json", Path(bundle) / "models" / "fingerprint.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except (OSError, ValueError):
                return None
    return None


def _robust_z(value: float, values: Sequence[float], floor: float) -> float:
    median = float(np.median(values))
    scale = max(1.4826 * float(np.median(np.abs(np.asarray(values) - median))), floor, 1e-6)
    return abs(value - median) / scale


def flag_outliers(
    rows: list[dict[str, Any]],
    signatures: Mapping[str, Mapping[str, Any]],
    volumes: Mapping[str, Mapping[str, float]],
    *,
    names: Mapping[int, str],
    fingerprint: Mapping[str, Any] | None = None,
) -> str:
    """Set ``ood`` (bool), ``ood_score`` and ``ood_reason`` on each worklist row; return what was the reference.

    Args:
        rows: worklist rows (``case`` keys).
        signatures: per case, :func:`intensity_signature` of its image.
        volumes: per case, predicted volume in mL per structure name.
        names: label value → structure name (background excluded or not: value 0 is skipped).
        fingerprint: the training fingerprint (:func:`load_fingerprint`), else the batch is the reference.
    """
    # Organs only: lesions are legitimately absent or of any size.
    structures = [n for v, n in sorted(names.items()) if int(v) != 0 and not is_lesion_name(n)]
    cases = [r["case"] for r in rows]
    if fingerprint is None and len(cases) < MIN_BATCH:
        for row in rows:
            row.update(ood=False, ood_score=0.0, ood_reason="")
        return f"none (no training fingerprint, and fewer than {MIN_BATCH} cases to compare)"
    reference = "the training fingerprint" if fingerprint else f"the median of these {len(cases)} cases"
    if len(cases) >= MIN_BATCH:
        histograms = _histograms([signatures[c]["sample"] for c in cases])
        median = np.median(histograms, axis=0)
        median /= max(float(median.sum()), 1e-12)
        divergences = [_js_bits(h, median) for h in histograms]
        typical = np.median([signatures[c]["percentiles"] for c in cases], axis=0).tolist()
    for row in rows:
        case = row["case"]
        reasons: list[tuple[float, str]] = []
        if fingerprint is not None:
            fg = fingerprint.get("foreground_intensity", {})
            low, high = float(fg.get("percentile_00_5", np.nan)), float(fg.get("percentile_99_5", np.nan))
            median = signatures[case]["foreground"]
            if median is not None and np.isfinite(low) and np.isfinite(high) and high > low:
                # the training foreground's range should hold some of the scan: the median far outside it is not the same kind of image
                distance = max(low - median, median - high, 0.0) / (high - low)
                if distance > 1.0:
                    reasons.append(
                        (
                            LIMIT * distance,
                            f"foreground intensity median {median:.4g} far outside the training foreground's "
                            f"0.5-99.5 % range [{low:.4g}, {high:.4g}]",
                        )
                    )
        if len(cases) >= MIN_BATCH:
            divergence = float(divergences[cases.index(case)])
            if divergence > JS_LIMIT:
                mine, theirs = signatures[case]["percentiles"], typical
                reasons.append(
                    (
                        LIMIT * divergence / JS_LIMIT,
                        f"intensity histogram {divergence:.2f} bits from the batch's (Jensen-Shannon; limit "
                        f"{JS_LIMIT:g}): p5/p50/p95 {mine[0]:.4g}/{mine[1]:.4g}/{mine[2]:.4g} vs "
                        f"{theirs[0]:.4g}/{theirs[1]:.4g}/{theirs[2]:.4g}",
                    )
                )
        for name in structures:
            predicted = float(volumes.get(case, {}).get(name, 0.0))
            trained = (fingerprint or {}).get("label_volume_ml", {})
            value = next((str(v) for v, n in names.items() if n == name), None)
            known = trained.get(value) if value is not None else None
            if known:
                low, high = float(known["min"]) / VOLUME_FACTOR, float(known["max"]) * VOLUME_FACTOR
                if predicted == 0.0 and int(known.get("n_cases", 0)) == int(fingerprint.get("n_cases", -1)):
                    reasons.append((LIMIT + 1, f"no {name} predicted; every training case has one"))
                elif predicted and not low <= predicted <= high:
                    reasons.append(
                        (
                            LIMIT + 1,
                            f"{name} {predicted:.4g} mL outside [{low:.4g}, {high:.4g}] (training "
                            f"{float(known['min']):.4g}-{float(known['max']):.4g} mL, factor {VOLUME_FACTOR:g})",
                        )
                    )
            elif len(cases) >= MIN_BATCH:
                others = [float(volumes.get(c, {}).get(name, 0.0)) for c in cases]
                present = [v for v in others if v > 0]
                if predicted == 0.0 and len(present) >= 0.75 * len(cases):
                    reasons.append(
                        (LIMIT + 1, f"no {name} predicted; {len(present)} of {len(cases)} cases have one")
                    )
                elif predicted > 0 and len(present) >= MIN_BATCH:
                    z = _robust_z(float(np.log(predicted)), np.log(present).tolist(), LOG_VOLUME_FLOOR)
                    if z > LIMIT:
                        reasons.append(
                            (
                                z,
                                f"{name} {predicted:.4g} mL vs median {float(np.median(present)):.4g} mL "
                                f"(robust z of log-volume {z:.1f})",
                            )
                        )
        reasons.sort(key=lambda item: -item[0])
        row.update(
            ood=bool(reasons),
            ood_score=round(reasons[0][0], 3) if reasons else 0.0,
            ood_reason="; ".join(text for _, text in reasons),
        )
    return reference
