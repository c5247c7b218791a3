"""A small cache the dashboard tests and the benchmark read: features runs (generic
without a head, head-only and full with one), maps with quality numbers,
evaluations, and a `folder:` dataset of tiny PNGs for thumbnails.

Embeddings are clustered like the paper's: generic features carry little class
structure, fully finetuned ones separate the classes, Unbarred Tight and Loose
Spirals stay close and Disturbed is scattered. No model gives such features on
demand, so the features parquets are written here in the contract format; the
maps (``core.analysis.maps.store``) and evaluations (`python -m core evaluate`) are what core
computes from them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.base import GALAXY10_CLASSES, GALAXY10_COUNTS
from core.data.islands import DISTURBED, LOOSE, TIGHT, island_centres
from tests.features_fixtures import write_features as write_run



def _labels(n: int, rng) -> np.ndarray:
    p = np.asarray(GALAXY10_COUNTS, float)
    labels = rng.choice(len(p), size=n, p=p / p.sum())
    labels[: len(p)] = np.arange(len(p))  # every class present even at tiny n
    return labels.astype(np.int64)


def _write_images(folder: Path, labels: np.ndarray, splits: np.ndarray, redshift: np.ndarray, rng) -> str:
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:24, :24]
    lines = ["file,label,split,redshift"]
    for i, lab in enumerate(labels):
        hue = np.array([40 + 20 * lab, 200 - 15 * lab, 90 + 10 * (lab % 3)], float)
        blob = np.exp(-((xx - 12) ** 2 + (yy - 12) ** 2 * (1 + 0.3 * lab)) / 30.0)[..., None]
        img = np.clip(blob * hue + rng.normal(0, 6, (24, 24, 3)), 0, 255).astype(np.uint8)
        name = f"images/g{i:05d}.png"
        Image.fromarray(img).save(folder / name)
        lines.append(f"{name},{lab},{splits[i]},{redshift[i]:.4f}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return f"folder:{folder}"


def _ids(n: int) -> list[str]:
    return [f"gal{i:06d}" for i in range(n)]


def _predictions(labels, accuracy, rng):
    """Predictions with the paper's error pattern: Tight <-> Loose, Disturbed anywhere."""
    k = len(GALAXY10_CLASSES)
    pred = labels.copy()
    wrong = rng.random(len(labels)) > accuracy
    wrong |= (labels == DISTURBED) & (rng.random(len(labels)) < 0.3)
    swap = {TIGHT: LOOSE, LOOSE: TIGHT}
    for i in np.flatnonzero(wrong):
        pred[i] = swap.get(int(labels[i]), int(rng.integers(k))) if rng.random() < 0.7 else int(rng.integers(k))
    conf = np.where(pred == labels, rng.uniform(0.55, 1.0, len(labels)), rng.uniform(0.3, 0.85, len(labels)))
    probs = rng.dirichlet(np.ones(k), len(labels)) * (1 - conf[:, None])
    probs[np.arange(len(labels)), pred] = conf
    return pred, conf.astype(np.float32), probs / probs.sum(1, keepdims=True)


def _embeddings(labels, centres, strength, noise, rng):
    x = rng.normal(0, noise, (len(labels), centres.shape[1]))
    c = centres[labels].copy()
    dist = labels == DISTURBED
    c[dist] = centres[rng.integers(len(centres), size=int(dist.sum()))]  # Disturbed: anywhere
    return (strength * c + x).astype(np.float32)


def _layout(labels, separation, rng):
    """A t-SNE-like 2-D layout: one island per class, spread by ``separation``."""
    xy = island_centres(labels, 30, 0.2, rng) * separation + rng.normal(0, 6, (len(labels), 2))
    return xy.astype(np.float32)


def write_features(cache: Path, dataset: str, model: str, mode: str, labels, splits, emb, meta=None,
                   preds=None, class_names=GALAXY10_CLASSES, family="dinov2", size="small") -> dict:
    columns = {"id": _ids(len(labels)), "split": splits, "label": labels, "embedding": emb}
    if preds is not None:
        columns.update(zip(("pred", "confidence", "probs"), preds))
    columns.update({f"meta_{name}": values for name, values in (meta or {}).items()})
    return write_run(cache, columns, dataset=dataset, model=model, mode=mode, class_names=list(class_names),
                     family=family, size=size, base_model="demo:generic" if mode != "generic" else None)


def write_layout_map(cache: Path, run: dict, method: str, xy: np.ndarray, aligned_to: str | None = None,
                     quality: dict | None = None) -> Path:
    """A ready-made layout stored by ``core.analysis.maps.store.write_layout`` under the key and provenance
    core gives that map (default options), so core and the dashboard take it for the computed
    one. Only for benchmark sizes where a real t-SNE would take minutes; tests let core compute maps."""
    from core.analysis.maps import store as mapstore

    return mapstore.write_layout(run, method, xy, _ids(len(xy)), cache, align_to=aligned_to, quality=quality or {},
                                 seconds=0.0, created="2026-01-01T00:00:00")


def _maps(cache: Path, generic: dict, head: dict, full: dict, labels, rng, layout: bool) -> None:
    """t-SNE for all three runs (the finetuned ones started from the generic map), PCA for
    generic and full, no UMAP: computed by ``core.analysis.maps.store``, or ready-made layouts."""
    if not layout:
        from core.analysis.maps import store as mapstore

        for run, method, align in ((generic, "tsne", None), (head, "tsne", generic), (full, "tsne", generic),
                                   (generic, "pca", None), (full, "pca", None)):
            mapstore.get_projection(run["key"], method, cache, align_to=align and align["key"], progress=False)
        return
    quality = {"generic": {"knn_preservation": 0.31, "trustworthiness": 0.88},
               "full": {"knn_preservation": 0.47, "trustworthiness": 0.95}}
    generic_xy = _layout(labels, 0.15, rng)
    write_layout_map(cache, generic, "tsne", generic_xy, quality=quality["generic"])
    write_layout_map(cache, head, "tsne", generic_xy + rng.normal(0, 0.5, generic_xy.shape).astype(np.float32),
                     aligned_to=generic["key"], quality=quality["generic"])
    write_layout_map(cache, full, "tsne", _layout(labels, 1.0, rng), aligned_to=generic["key"],
                     quality=quality["full"])


def evaluate(cache: Path) -> None:
    """`python -m core evaluate` on the cache: evaluations and the ΔF1 summary, as core writes them."""
    import contextlib
    import io

    from core.__main__ import main

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["evaluate", "--cache", str(cache)]) == 0


def build_cache(root, n: int = 600, images: bool = True, dim: int = 32, seed: int = 0,
                second_dataset: bool = True, layout_maps: bool = False) -> Path:
    """Write a fixture cache under ``root/cache`` and return its path.

    Dataset A (n galaxies; a `folder:` of PNGs when ``images``, else an unopenable
    reference so thumbnails fall back to placeholders): runs demo:generic (no head),
    demo:head and demo:full, t-SNE for all three (finetuned maps aligned to the
    generic one), PCA for generic and full, no UMAP, evaluations for head and full.
    Dataset B (``second_dataset``): one generic run without a head, no images, a t-SNE map.
    Maps and evaluations are computed by core (``layout_maps``: ready-made t-SNE
    layouts and no PCA, for benchmark sizes).
    """
    root = Path(root)
    cache = root / "cache"
    rng = np.random.default_rng(seed)
    labels = _labels(n, rng)
    splits = np.where(rng.random(n) < 0.2, "test", "train")
    splits[:20] = "test"
    redshift = rng.gamma(2.0, 0.03, n).round(4)
    dataset = (_write_images(root / "galaxies", labels, splits, redshift, rng) if images
               else f"folder:{root / 'no-images-here'}")
    meta = {"redshift": redshift.astype(np.float64), "pitch_angle": rng.uniform(5, 40, n).astype(np.float32)}
    k = len(GALAXY10_CLASSES)
    centres = rng.normal(0, 1, (k, dim))
    centres[LOOSE] = 0.8 * centres[TIGHT] + 0.2 * centres[LOOSE]
    generic_emb = _embeddings(labels, centres, 0.35, 1.0, rng)
    full_emb = _embeddings(labels, centres, 2.0, 0.6, rng)

    generic = write_features(cache, dataset, "demo:generic", "generic", labels, splits, generic_emb, meta)
    head_preds = _predictions(labels, 0.6, rng)
    head = write_features(cache, dataset, "demo:head", "head", labels, splits, generic_emb, meta, head_preds)
    full_preds = _predictions(labels, 0.86, rng)
    full = write_features(cache, dataset, "demo:full", "full", labels, splits, full_emb, meta, full_preds)
    _maps(cache, generic, head, full, labels, rng, layout_maps)
    evaluate(cache)

    if second_dataset:
        m = 100
        lab_b = _labels(m, rng)
        split_b = np.where(np.arange(m) % 5 == 0, "test", "train")
        other = write_features(cache, f"folder:{root / 'other-galaxies'}", "hf:facebook/dinov2-small", "generic",
                               lab_b, split_b, _embeddings(lab_b, centres, 0.5, 1.0, rng))
        if layout_maps:
            write_layout_map(cache, other, "tsne", _layout(lab_b, 0.3, rng), quality={"trustworthiness": 0.9})
        else:
            from core.analysis.maps import store as mapstore

            mapstore.get_projection(other["key"], "tsne", cache, progress=False)
    return cache
