"""Write a survey-sized features run and its maps into a cache, without a GPU.

    python bench/make_big_run.py --rows 1000000 --cache /tmp/big-cache
    streamlit run dashboard/app.py -- --cache /tmp/big-cache

The features are synthetic but shaped like the paper's finetuned ones (one
cluster per Galaxy10 class in Galaxy10's proportions, Unbarred Tight and Loose
Spirals close together, Disturbed scattered; predictions with the paper's error
pattern; ra/dec/redshift metadata). They are written through `core`'s own
writers: `core.store.cache.AtomicParquetWriter` (streamed row groups, atomic rename)
for the features, `core.analysis.maps.store.write_layout` for the maps (the key and
provenance `get_projection` gives them), and
`core.analysis.evaluation.evaluate_run` for the scores, so `python -m core ls`, the
dashboard, its tests and `bench/dashboard.py` read them like any other run.

Maps: PCA (`core.analysis.maps.projection.fit_pca`, the real method) and, because t-SNE of a
million points does not fit this machine, a t-SNE-*like* layout of class islands
stored in the t-SNE slot; its provenance says so (``layout``). Quality numbers
come from `core.analysis.maps.quality` on a seeded sample (``points`` records how many).
The dataset reference is a `folder:` that holds no images, so thumbnails are
grey placeholders (a synthetic source would render them, but opening one of a
million rows takes minutes on two cores).
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.store import cache as store  # noqa: E402
from core.analysis.maps import store as mapstore  # noqa: E402
from core.analysis.maps import projection as proj  # noqa: E402
from core.data.base import GALAXY10_CLASSES, GALAXY10_COUNTS  # noqa: E402
from core.data.islands import DISTURBED, LOOSE, TIGHT, island_centres  # noqa: E402
from core.store.embeddings import embedding_column  # noqa: E402

CHUNK = 100_000


def labels_of(n: int, rng) -> np.ndarray:
    p = np.asarray(GALAXY10_COUNTS, float)
    return rng.choice(len(p), size=n, p=p / p.sum()).astype(np.int64)


def centres(dim: int, rng) -> np.ndarray:
    c = rng.normal(0, 1, (len(GALAXY10_CLASSES), dim))
    c[LOOSE] = 0.8 * c[TIGHT] + 0.2 * c[LOOSE]
    return c


def embeddings(labels, c, rng) -> np.ndarray:
    own = labels.copy()
    dist = own == DISTURBED
    own[dist] = rng.integers(len(c), size=int(dist.sum()))  # Disturbed: anywhere
    return (2.0 * c[own] + rng.normal(0, 0.6, (len(labels), c.shape[1]))).astype(np.float32)


def predictions(labels, rng, accuracy: float = 0.86):
    """Mistakes like the paper's: Tight <-> Loose above all, Disturbed anywhere."""
    k = len(GALAXY10_CLASSES)
    wrong = (rng.random(len(labels)) > accuracy) | ((labels == DISTURBED) & (rng.random(len(labels)) < 0.3))
    swap = np.arange(k)
    swap[TIGHT], swap[LOOSE] = LOOSE, TIGHT
    other = np.where(rng.random(len(labels)) < 0.7, swap[labels], rng.integers(k, size=len(labels)))
    other = np.where(other == labels, (labels + 1 + rng.integers(k - 1, size=len(labels))) % k, other)
    pred = np.where(wrong, other, labels)
    conf = np.where(pred == labels, rng.uniform(0.55, 1.0, len(labels)), rng.uniform(0.3, 0.85, len(labels)))
    return pred.astype(np.int64), conf.astype(np.float32)


def island_layout(labels, rng) -> np.ndarray:
    """A t-SNE-like picture: one island per class, Tight and Loose touching, Disturbed spread."""
    at = island_centres(labels, 60, 0.25, rng)
    spread = 2.0 + rng.gamma(2.0, 1.5, len(labels))[:, None]  # dense cores, thin halos
    return (at + rng.normal(0, 1, (len(labels), 2)) * spread).astype(np.float32)


def schema(dim: int, k: int) -> pa.Schema:
    return pa.schema([
        ("row", pa.int64()), ("id", pa.string()), ("split", pa.string()), ("label", pa.int64()),
        ("embedding", pa.list_(pa.float32(), dim)), ("pred", pa.int64()), ("confidence", pa.float32()),
        ("probs", pa.list_(pa.float32(), k)), ("meta_ra", pa.float64()), ("meta_dec", pa.float64()),
        ("meta_redshift", pa.float64())])


def write_features(cache: Path, n: int, dim: int, seed: int) -> tuple[dict, np.ndarray]:
    """The features parquet, streamed in row groups; returns (run, embeddings X)."""
    rng = np.random.default_rng(seed)
    k = len(GALAXY10_CLASSES)
    c = centres(dim, rng)
    dataset = f"folder:{cache.parent / f'survey-{n}'}"  # no images there: placeholders, said on the page
    model = f"dir:{cache.parent / 'survey-model'}"
    key = store.key_of("bench-big-run", n, dim, seed)
    prov = dict(kind="features", format=1, dataset=dataset, dataset_fingerprint=store.key_of(dataset, n, seed),
                model=model, model_fingerprint=store.key_of("bench-big-model", dim), family="dinov2", size="base",
                mode="full", pooling="cls", split="all", dim=dim, has_head=True, class_names=list(GALAXY10_CLASSES),
                id2label={str(i): name for i, name in enumerate(GALAXY10_CLASSES)}, dtype="float32", device="cpu",
                synthetic="bench/make_big_run.py: clustered synthetic features, not a model's",
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    path = store.path_for(cache, "features", key)
    X = np.empty((n, dim), np.float32)
    with store.AtomicParquetWriter(path, schema(dim, k), prov) as w:
        for start in tqdm(range(0, n, CHUNK), desc="features", unit="chunk"):
            m = min(CHUNK, n - start)
            lab = labels_of(m, rng)
            emb = embeddings(lab, c, rng)
            X[start:start + m] = emb
            pred, conf = predictions(lab, rng)
            probs = rng.dirichlet(np.ones(k), m).astype(np.float32) * (1 - conf[:, None])
            probs[np.arange(m), pred] = conf
            rows = np.arange(start, start + m)
            w.write(pa.table({
                "row": pa.array(rows, pa.int64()), "id": pa.array(np.char.mod("J%07d", rows)),
                "split": pa.array(np.where(rng.random(m) < 0.2, "test", "train")), "label": pa.array(lab),
                "embedding": embedding_column(emb), "pred": pa.array(pred), "confidence": pa.array(conf),
                "probs": embedding_column(probs / probs.sum(1, keepdims=True)),
                "meta_ra": pa.array(rng.uniform(0, 360, m)), "meta_dec": pa.array(np.degrees(np.arcsin(rng.uniform(-0.3, 1, m)))),
                "meta_redshift": pa.array(rng.gamma(2.0, 0.04, m).round(4))}))
    return {**prov, "key": key, "path": str(path)}, X


def write_map(cache: Path, run: dict, method: str, xy: np.ndarray, X: np.ndarray, labels: np.ndarray,
              extra: dict, sample: int = 500) -> Path:
    """A map at the path `core.analysis.maps.store.get_projection` reads (written by `core.analysis.maps.store.write_layout`),
    with its quality numbers (scored on ``sample`` galaxies; 0: none recorded, for quick test fixtures)."""
    t = time.perf_counter()
    quality, feature_quality = {}, None
    if sample:
        quality = proj.map_quality(X, xy, k=10, max_points=sample)
        few = np.sort(np.random.default_rng(0).choice(len(X), min(len(X), 40 * sample), replace=False))
        feature_quality = {**proj.feature_space_quality(X[few], labels[few], GALAXY10_CLASSES), "sampled": True}
    return mapstore.write_layout(run, method, xy, np.char.mod("J%07d", np.arange(len(xy))), cache, quality=quality,
                                 feature_quality=feature_quality, quality_seconds=round(time.perf_counter() - t, 3),
                                 **extra)


def make(cache, rows: int = 1_000_000, dim: int = 32, seed: int = 0, pca: bool = True, sample: int = 500) -> dict:
    """Write the run, its maps and its evaluation into ``cache``; returns the run."""
    from core.analysis.evaluation import evaluate_run, read_predictions

    cache = store.cache_dir(cache)
    t = time.perf_counter()
    run, X = write_features(cache, rows, dim, seed)
    print(f"features: {rows:,} x {dim} in {time.perf_counter() - t:.1f} s -> {run['path']}", flush=True)
    labels = store.read_table(run["path"], columns=["label"]).column("label").to_numpy()
    t = time.perf_counter()
    layout = island_layout(labels, np.random.default_rng(seed + 1))
    note = "synthetic layout of class islands written by bench/make_big_run.py, not a t-SNE"
    write_map(cache, run, "tsne", layout, X, labels, {"layout": note, "seconds": 0.0}, sample)
    print(f"t-SNE-like layout in {time.perf_counter() - t:.1f} s", flush=True)
    if pca:
        t = time.perf_counter()
        xy = proj.fit_pca(X).embedding.astype(np.float32)
        write_map(cache, run, "pca", xy, X, labels, {"seconds": round(time.perf_counter() - t, 3)}, sample)
        print(f"PCA in {time.perf_counter() - t:.1f} s", flush=True)
    ev = evaluate_run(run, read_predictions(run["path"]))
    store.write_json(store.path_for(cache, "evaluations", run["key"], ".json"), ev)
    print(f"evaluation: macro F1 {ev['macro_f1']:.3f} on the {ev['split']} split", flush=True)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=32, help="embedding width (default 32: the Neighbours view "
                    "holds the whole matrix in memory, 1M x 768 would be 3 GB)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-pca", action="store_true", help="skip the PCA map")
    ap.add_argument("--quality-sample", type=int, default=500, help="galaxies the map quality is scored on "
                    "(default 500; 0 = record none)")
    ap.add_argument("--cache", required=True, help="cache folder to write into")
    args = ap.parse_args()
    if args.rows < 20:
        print("error: --rows must be at least 20", file=sys.stderr)
        return 2
    make(args.cache, args.rows, args.dim, args.seed, not args.no_pca, args.quality_sample)
    return 0


if __name__ == "__main__":
    sys.exit(main())
