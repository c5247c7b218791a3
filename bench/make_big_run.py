"""Write a survey-sized features run and its maps into a cache, without a GPU.

    python bench/make_big_run.py --rows 1000000 --cache /tmp/big-cache
    python bench/make_big_run.py --rows 10000000 --dim 768 --cache /tmp/10m   # the survey rehearsal
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

Survey scale (``--dim 128`` or wider): the features are float16 on disk and
each class is a 16-d linear manifold plus a little isotropic noise (as
`bench/knn.py`'s; real features' PCA spectra fall fast, and isotropic noise in
768-d would make every neighbour equally far). At 3,000 galaxies their
relative contrast (mean distance to the 10th neighbour / mean distance, unit
vectors) is 0.34, against 0.25 for the demo's finetuned features: if anything,
harder for a neighbour index. A run of more than ``--shard-rows`` rows is
written as a sharded run (`core.store.shards.ShardedWriter`: parts of 100,000
rows and a manifest) and streamed: only a sample of ``HOLD`` rows is kept in
memory, the PCA is fitted on the first part (rows are drawn independently, so
it is a random sample) and applied part by part, and map quality is scored
within that sample (``quality_sample_rows`` in the map's provenance).
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
from core.store import shards  # noqa: E402
from core.analysis.maps import store as mapstore  # noqa: E402
from core.analysis.maps import projection as proj  # noqa: E402
from core.data.base import GALAXY10_CLASSES, GALAXY10_COUNTS  # noqa: E402
from core.data.islands import DISTURBED, LOOSE, TIGHT, island_centres  # noqa: E402
from core.store.embeddings import embedding_column  # noqa: E402

CHUNK = 100_000
HOLD = 100_000  # rows kept in memory when the run does not fit (PCA fit, quality sample)
HOLD_ALL_BYTES = 2 << 30  # a run whose float32 features fit in this is held whole (as before)
LATENT = 16  # each class a LATENT-d linear manifold (survey-scale features)


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


def manifold_basis(dim: int, rng) -> np.ndarray:
    """(classes, LATENT, dim): each class's manifold directions (bench/knn.py's model)."""
    latent = min(LATENT, dim)
    return (rng.normal(0, 1, (len(GALAXY10_CLASSES), latent, dim)) / np.sqrt(latent)).astype(np.float32)


def manifold_embeddings(labels, c, W, rng) -> np.ndarray:
    """2 x class centre + a point on the class's manifold + N(0, 0.1) noise; Disturbed
    galaxies sit on a random class's manifold, as they scatter in real feature spaces."""
    own = labels.copy()
    dist = own == DISTURBED
    own[dist] = rng.integers(len(c), size=int(dist.sum()))
    out = (2.0 * c[own]).astype(np.float32)
    out += rng.standard_normal((len(labels), c.shape[1]), dtype=np.float32) * np.float32(0.1)
    z = rng.standard_normal((len(labels), W.shape[1]), dtype=np.float32)
    for j in range(len(c)):
        hit = own == j
        out[hit] += z[hit] @ W[j]
    return out


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


def survey_scale(dim: int) -> bool:
    """float16 manifold features (survey rehearsal) from 128-d on; small test fixtures keep
    the isotropic clusters (and their random stream) they were written with."""
    return dim >= 128


def schema(dim: int, k: int) -> pa.Schema:
    emb = pa.float16() if survey_scale(dim) else pa.float32()
    return pa.schema([
        ("row", pa.int64()), ("id", pa.string()), ("split", pa.string()), ("label", pa.int64()),
        ("embedding", pa.list_(emb, dim)), ("pred", pa.int64()), ("confidence", pa.float32()),
        ("probs", pa.list_(pa.float32(), k)), ("meta_ra", pa.float64()), ("meta_dec", pa.float64()),
        ("meta_redshift", pa.float64())])


class Held:
    """What is kept of the features while they stream to disk: every row when they fit in
    ``HOLD_ALL_BYTES`` (float32), else the first ``HOLD`` rows (a random sample: rows are
    drawn independently). ``on_part`` callbacks see every chunk (e.g. a PCA applied as it goes)."""

    def __init__(self, n: int, dim: int):
        self.all = n * dim * 4 <= HOLD_ALL_BYTES
        self.X = np.empty((n if self.all else min(n, HOLD), dim), np.float32)
        self.on_part = []

    def add(self, start: int, emb: np.ndarray) -> None:
        if start < len(self.X):
            m = min(len(emb), len(self.X) - start)
            self.X[start:start + m] = emb[:m]
        for f in self.on_part:
            f(start, emb)


def _chunk_table(start: int, m: int, lab, emb, rng, k: int, dtype) -> pa.Table:
    pred, conf = predictions(lab, rng)
    probs = rng.dirichlet(np.ones(k), m).astype(np.float32) * (1 - conf[:, None])
    probs[np.arange(m), pred] = conf
    rows = np.arange(start, start + m)
    return pa.table({
        "row": pa.array(rows, pa.int64()), "id": pa.array(np.char.mod("J%07d", rows)),
        "split": pa.array(np.where(rng.random(m) < 0.2, "test", "train")), "label": pa.array(lab),
        "embedding": embedding_column(emb, dtype), "pred": pa.array(pred), "confidence": pa.array(conf),
        "probs": embedding_column(probs / probs.sum(1, keepdims=True)),
        "meta_ra": pa.array(rng.uniform(0, 360, m)), "meta_dec": pa.array(np.degrees(np.arcsin(rng.uniform(-0.3, 1, m)))),
        "meta_redshift": pa.array(rng.gamma(2.0, 0.04, m).round(4))})


def write_features(cache: Path, n: int, dim: int, seed: int, held: Held | None = None,
                   shard_rows: int | None = None) -> tuple[dict, np.ndarray]:
    """The features run, streamed in row groups; sharded above ``shard_rows`` rows (None:
    ``shards.SHARD_ROWS`` at survey scale, one file otherwise); returns (run, the held
    embeddings: all rows, or a sample, see :class:`Held`)."""
    if shard_rows is None:
        shard_rows = shards.SHARD_ROWS if survey_scale(dim) else n
    rng = np.random.default_rng(seed)
    k = len(GALAXY10_CLASSES)
    c = centres(dim, rng)
    survey = survey_scale(dim)
    W = manifold_basis(dim, np.random.default_rng([seed, 1])) if survey else None
    dtype = np.float16 if survey else np.float32
    held = held or Held(n, dim)
    dataset = f"folder:{cache.parent / f'survey-{n}'}"  # no images there: placeholders, said on the page
    model = f"dir:{cache.parent / 'survey-model'}"
    key = store.key_of("bench-big-run", n, dim, seed)
    kind = ("clustered synthetic features, not a model's" if not survey else
            f"synthetic features, not a model's: one {min(LATENT, dim)}-d manifold per class, float16")
    prov = dict(kind="features", format=1, dataset=dataset, dataset_fingerprint=store.key_of(dataset, n, seed),
                model=model, model_fingerprint=store.key_of("bench-big-model", dim), family="dinov2", size="base",
                mode="full", pooling="cls", split="all", dim=dim, has_head=True, class_names=list(GALAXY10_CLASSES),
                id2label={str(i): name for i, name in enumerate(GALAXY10_CLASSES)},
                dtype=np.dtype(dtype).name, device="cpu", synthetic=f"bench/make_big_run.py: {kind}",
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def chunk(start: int, m: int) -> pa.Table:
        lab = labels_of(m, rng)
        if survey:
            emb = manifold_embeddings(lab, c, W, np.random.default_rng([seed, 2, start]))
            emb = emb.astype(np.float16).astype(np.float32)  # what is stored: the PCA and samples see the same
        else:
            emb = embeddings(lab, c, rng)
        held.add(start, emb)
        return _chunk_table(start, m, lab, emb, rng, k, dtype)

    sch = schema(dim, k)
    if n <= shard_rows:
        path = store.path_for(cache, "features", key)
        with store.AtomicParquetWriter(path, sch, prov) as w:
            for start in tqdm(range(0, n, CHUNK), desc="features", unit="chunk"):
                w.write(chunk(start, min(CHUNK, n - start)))
        return {**prov, "key": key, "path": str(path)}, held.X
    folder = store.path_for(cache, "features", key, "")
    writer = shards.ShardedWriter(folder, prov, n, shard_rows)
    step = min(CHUNK, shard_rows)
    for part, (a, b) in enumerate(tqdm(writer.ranges, desc="features", unit="part")):
        with writer.part_writer(part, sch) as w:
            for start in range(a, b, step):
                w.write(chunk(start, min(step, b - start)))
    run = writer.finish(prov)
    size = sum(p.stat().st_size for p in shards.parts(folder))
    return {**run, "key": key, "path": str(folder), "bytes": size}, held.X


def write_map(cache: Path, run: dict, method: str, xy: np.ndarray, X: np.ndarray, labels: np.ndarray,
              extra: dict, sample: int = 500) -> Path:
    """A map at the path `core.analysis.maps.store.get_projection` reads (written by `core.analysis.maps.store.write_layout`),
    with its quality numbers (scored on ``sample`` galaxies; 0: none recorded, for quick test fixtures).
    ``X`` may hold only the first rows (a streamed run): quality is then scored within them."""
    t = time.perf_counter()
    quality, feature_quality = {}, None
    m = len(X)
    if sample:
        quality = proj.map_quality(X, xy[:m], k=10, max_points=sample)
        if m < len(xy):
            quality["quality_sample_rows"] = m
        few = np.sort(np.random.default_rng(0).choice(m, min(m, 40 * sample), replace=False))
        feature_quality = {**proj.feature_space_quality(X[few], labels[few], GALAXY10_CLASSES), "sampled": True}
    return mapstore.write_layout(run, method, xy, np.char.mod("J%07d", np.arange(len(xy))), cache, quality=quality,
                                 feature_quality=feature_quality, quality_seconds=round(time.perf_counter() - t, 3),
                                 **extra)


class StreamingPCA:
    """PCA fitted on the first chunk it sees (a random sample: rows are independent) and
    applied to every chunk as the features stream to disk."""

    def __init__(self, n: int, seed: int = 42):
        self.xy = np.empty((n, 2), np.float32)
        self.model, self.seed, self.seconds = None, seed, 0.0

    def __call__(self, start: int, emb: np.ndarray) -> None:
        from sklearn.decomposition import PCA

        t = time.perf_counter()
        if self.model is None:
            self.model = PCA(n_components=2, random_state=self.seed).fit(emb)
            self.fit_rows = len(emb)
        self.xy[start:start + len(emb)] = self.model.transform(emb)
        self.seconds += time.perf_counter() - t


def make(cache, rows: int = 1_000_000, dim: int = 32, seed: int = 0, pca: bool = True, sample: int = 500,
         shard_rows: int | None = None) -> dict:
    """Write the run, its maps and its evaluation into ``cache``; returns the run."""
    from core.analysis.evaluation import evaluate_run, read_predictions

    cache = store.cache_dir(cache)
    t = time.perf_counter()
    held = Held(rows, dim)
    streamed_pca = StreamingPCA(rows) if pca and not held.all else None
    if streamed_pca is not None:
        held.on_part.append(streamed_pca)
    run, X = write_features(cache, rows, dim, seed, held, shard_rows)
    print(f"features: {rows:,} x {dim} in {time.perf_counter() - t:.1f} s -> {run['path']}", flush=True)
    labels = store.read_table(run["path"], columns=["label"]).column("label").to_numpy()
    t = time.perf_counter()
    layout = island_layout(labels, np.random.default_rng(seed + 1))
    note = "synthetic layout of class islands written by bench/make_big_run.py, not a t-SNE"
    write_map(cache, run, "tsne", layout, X, labels, {"layout": note, "seconds": 0.0}, sample)
    print(f"t-SNE-like layout in {time.perf_counter() - t:.1f} s", flush=True)
    if streamed_pca is not None:
        t = time.perf_counter()
        write_map(cache, run, "pca", streamed_pca.xy, X, labels,
                  {"seconds": round(streamed_pca.seconds, 3), "fitted_rows": streamed_pca.fit_rows}, sample)
        print(f"PCA (fitted on {streamed_pca.fit_rows:,} rows, applied as they were written) in "
              f"{streamed_pca.seconds + time.perf_counter() - t:.1f} s", flush=True)
    elif pca:
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
    ap.add_argument("--dim", type=int, default=32, help="embedding width (default 32; from 128 on the features "
                    "are float16 class manifolds, sharded above 100,000 rows, as a survey run would be)")
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
