"""Survey-scale kNN: the exact search's ratios and the per-run index's goals, one command.

    python bench/knn.py                                   # 17,736 x 768 exact + a 100k-row index
    python bench/knn.py --index-rows 1000000 --outliers   # the index at 1M, outlier scores from it
    python bench/knn.py --libraries --index-rows 100000   # faiss IVF-PQ vs hnswlib vs usearch
    python bench/knn.py --exact-rows 0 --run KEY --cache /tmp/10m/cache   # the 10M rehearsal's index

Features are synthetic, shaped like real embeddings: 10 clusters (Galaxy10's
classes), each a 16-d linear manifold in 768-d plus a little isotropic noise
(real features' PCA spectra fall fast; isotropic 768-d noise would make every
neighbour equally far, which no feature space does).

1. Exact kNN (core.analysis.knn.knn on the CPU), 17,736 x 768, k = 10, against one
   float32 X.Xᵀ and scikit-learn's brute-force NearestNeighbors, in the same run
   (goals: <= 1.2x and <= 0.6x). Two interleaved rounds, the faster of each kept.
2. The index (core.analysis.knn_index): a features run of --index-rows rows written
   through core's writer, its index built (time, peak RSS of the build, bytes per
   galaxy on disk, recall@10 on 1,000 sampled queries, recorded by the build), and
   200 single queries through the entry point (core.analysis.knn.neighbours) from
   this process: p50/p95 ms for k = 10 (goals: p95 <= 100 ms, recall >= 0.95,
   <= 128 B/galaxy).
3. --outliers: outlier scores (k = 10, cosine) of every row from the index, timed,
   and the top 1% compared with exact scores on a subset of --outlier-subset rows.
Writes bench/results/knn.json; every number comes with os.getloadavg().
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.analysis import knn  # noqa: E402
from core.analysis import knn_index  # noqa: E402
from core.store import cache as store  # noqa: E402
from timing import best_of, load  # noqa: E402

CLASSES = 10


def features(n: int, d: int = 768, seed: int = 0, latent: int = 16, start: int = 0, chunk: int = 50_000):
    """Rows ``start .. start + n`` of the synthetic features (the same rows whatever the chunking)."""
    rng = np.random.default_rng(seed)
    C = rng.normal(0, 1, (CLASSES, d)).astype(np.float32)
    W = (rng.normal(0, 1, (CLASSES, latent, d)) / np.sqrt(latent)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        r = np.random.default_rng([seed, (start + s) // chunk])
        m = min(chunk, n - s)
        lab = r.integers(CLASSES, size=m)
        block = 2 * C[lab] + r.normal(0, 0.1, (m, d)).astype(np.float32)
        z = r.normal(0, 1, (m, latent)).astype(np.float32)
        for j in range(CLASSES):
            hit = lab == j
            block[hit] += z[hit] @ W[j]
        out[s:s + m] = block
    return out


def exact(n: int, k: int) -> dict:
    from sklearn.neighbors import NearestNeighbors

    X = features(n)
    load0 = load()
    t_gemm = t_ours = t_sk = np.inf
    for _ in range(2):  # interleaved rounds, the fastest of each kept: load drifts alike for all three
        t_gemm = min(t_gemm, best_of(lambda: X @ X.T, 1))
        t_ours = min(t_ours, best_of(lambda: knn.knn(X, k, device="cpu"), 1))
        t_sk = min(t_sk, best_of(lambda: NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors(), 1))
    ours, _ = knn.knn(X, k, device="cpu")
    ref = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors(return_distance=False)
    out = {"rows": n, "dim": X.shape[1], "k": k, "gemm_s": round(t_gemm, 2), "ours_s": round(t_ours, 2),
           "sklearn_brute_s": round(t_sk, 2), "ratio_to_gemm": round(t_ours / t_gemm, 3),
           "ratio_to_sklearn": round(t_ours / t_sk, 3), "same_neighbours_as_sklearn": round(float((ours == ref).mean()), 5),
           "goal_gemm_1.2x_met": t_ours <= 1.2 * t_gemm, "goal_sklearn_0.6x_met": t_ours <= 0.6 * t_sk,
           "load_before": load0, "load_after": load()}
    print(f"exact kNN {n} x {X.shape[1]}, k={k}: ours {t_ours:.2f} s = {t_ours / t_gemm:.2f}x one X.Xt "
          f"({t_gemm:.2f} s), {t_ours / t_sk:.2f}x sklearn brute ({t_sk:.2f} s); load {load0} -> {load()}", flush=True)
    return out


def write_run(cache: Path, n: int, dim: int = 768, chunk: int = 100_000) -> dict:
    """A features run of n synthetic rows (float16 on disk, like make_big_run), streamed."""
    key = store.key_of("bench-knn", n, dim)
    path = store.path_for(store.cache_dir(cache), "features", key)
    prov = {"kind": "features", "format": 1, "dataset": "synthetic:bench-knn", "model": "bench", "mode": "generic",
            "pooling": "cls", "split": "all", "class_names": [f"c{i}" for i in range(CLASSES)], "rows": n, "dim": dim,
            "has_head": False, "dtype": "float16", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    schema = pa.schema([("row", pa.int64()), ("id", pa.string()), ("label", pa.int64()),
                        ("embedding", pa.list_(pa.float16(), dim))])
    with store.AtomicParquetWriter(path, schema, prov) as w:
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            X = features(m, dim, start=s)
            emb = pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float16).reshape(-1)), dim)
            w.write(pa.table({"row": np.arange(s, s + m), "id": [f"b{i}" for i in range(s, s + m)],
                              "label": np.zeros(m, np.int64), "embedding": emb}, schema=schema))
    return {**prov, "key": key, "path": str(path), "bytes": path.stat().st_size}


def index_goals(n: int, cache: Path, outliers: bool, subset: int, run_key: str | None = None) -> dict:
    if run_key:  # an existing run, e.g. the 10M rehearsal (bench/make_big_run.py --rows 10000000 --dim 768)
        from core.analysis.maps.store import features_run

        run = features_run(run_key, cache)
        n = int(run["rows"])
    else:
        run = write_run(cache, n)
    load0 = load()
    t = time.perf_counter()
    index = knn_index.get_index(run, "cosine", cache, progress=True)
    t_build = time.perf_counter() - t
    meta = index.meta
    V = index.vectors  # the memory-mapped features the re-rank reads, as the dashboard does: never loaded whole
    rng = np.random.default_rng(1)
    times = []
    for i in rng.choice(n, 200, replace=False):
        t = time.perf_counter()
        knn.neighbours(V, 10, queries=np.asarray(V[i:i + 1], np.float32), metric="cosine", index=index, exclude=[i],
                       exact_below=0)
        times.append(time.perf_counter() - t)
    p50, p95 = (float(np.percentile(times, q)) * 1000 for q in (50, 95))
    out = {"rows": n, "library": meta["library"], "params": meta["params"], "build_s": round(t_build, 1),
           "build_seconds": meta["seconds"], "peak_rss_mb": meta["peak_rss_mb"],
           "bytes_per_galaxy": meta["bytes_per_galaxy"], "recall_at_10": meta["recall_at_10"],
           "recall_at_10_without_rerank": meta["recall_at_10_without_rerank"], "recall_queries": meta["recall_queries"],
           "query_p50_ms": round(p50, 2), "query_p95_ms": round(p95, 2),
           "goal_p95_100ms_met": p95 <= 100, "goal_recall_0.95_met": meta["recall_at_10"] >= 0.95,
           "goal_128B_met": meta["bytes_per_galaxy"] <= 128, "recall_by_nprobe": meta.get("recall_by_nprobe"),
           "rerank_vectors_bytes_per_galaxy": round((meta.get("vectors") or {}).get("bytes", 0) / n, 1),
           "opened_or_built_s": round(t_build, 1), "process_peak_rss_mb": round(
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "load_before": load0, "load_after": load()}
    print(f"index {n:,} x 768: build {t_build:.1f} s (peak RSS {meta['peak_rss_mb']:.0f} MB), "
          f"{meta['bytes_per_galaxy']} B/galaxy, recall@10 {meta['recall_at_10']} ({meta['recall_queries']} queries; "
          f"{meta['recall_at_10_without_rerank']} without re-rank), query p50 {p50:.1f} ms p95 {p95:.1f} ms; "
          f"load {load0} -> {load()}", flush=True)
    if outliers:
        from core.analysis.outliers import streamed_scores

        t = time.perf_counter()
        search = {}
        fast = streamed_scores(index, 10, search=search, progress=True)["knn_raw"].to_numpy()  # what get_anomalies runs
        t_index = time.perf_counter() - t
        sub = np.sort(rng.choice(n, min(subset, n), replace=False))
        t = time.perf_counter()
        # exact, against every galaxy, each query's own row left out: streamed over the rows
        slow = exact_scores(V, sub, 10)
        t_exact = time.perf_counter() - t
        top = max(1, len(sub) // 100)
        a = set(np.argsort(-fast[sub])[:top].tolist())
        b = set(np.argsort(-slow)[:top].tolist())
        out["outliers"] = {"rows": n, "index_s": round(t_index, 1), "search": search, "subset": len(sub),
                           "exact_subset_s": round(t_exact, 1), "top1pct_overlap": round(len(a & b) / top, 3),
                           "load": load()}
        print(f"outlier scores of {n:,} from the index: {t_index:.1f} s; top 1% of a {len(sub):,} subset "
              f"overlaps the exact top 1% by {len(a & b) / top:.3f} (exact: {t_exact:.1f} s); load {load()}", flush=True)
    return out


def exact_scores(V, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact kNN outlier scores (mean cosine distance to the k nearest other rows) of rows
    ``queries`` of V (n, d): the exact search of the kNN entry point (blocked BLAS), V in memory."""
    X = np.asarray(V, np.float32)
    _, d, _ = knn.neighbours(X, k, queries=X[queries], metric="cosine", exclude=queries, exact_below=1 << 62)
    return d.astype(np.float64).mean(1)


def libraries(n: int) -> list[dict]:
    """faiss IVF-PQ (+ exact re-rank) vs hnswlib vs usearch (int8) on n rows: build, size, recall, p95."""
    import faiss
    import hnswlib
    from usearch.index import Index

    X = features(n, seed=1)
    rng = np.random.default_rng(0)
    qi = rng.choice(n, 300, replace=False)
    Q = X[qi]
    truth, _, _ = knn.neighbours(X, 10, queries=Q, exclude=qi)

    def recall(I):
        return float(np.mean([len(set(a[:10]) & set(b)) / 10 for a, b in zip(I, truth)]))

    def rerank(cands):
        out = []
        for q, c, i in zip(Q, cands, qi):
            c = c[(c >= 0) & (c != i)]
            out.append(c[np.argsort(((X[c] - q) ** 2).sum(1))[:10]])
        return out

    def p95(search):
        ts = []
        for j in range(100):
            t = time.perf_counter()
            search(Q[j:j + 1])
            ts.append(time.perf_counter() - t)
        return round(float(np.percentile(ts, 95)) * 1000, 2)

    def size(save):
        f = tempfile.mktemp()
        save(f)
        s = os.path.getsize(f) / n
        os.remove(f)
        return round(s, 1)

    rows = []
    p = knn_index.default_params(n, X.shape[1])
    t = time.perf_counter()
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatL2(X.shape[1]), X.shape[1], p["nlist"], p["m"], 8)
    ivf.train(X[rng.choice(n, min(n, 64 * p["nlist"]), replace=False)])
    ivf.add(X)
    ivf.nprobe = p["nprobe"]
    rows.append({"library": f"faiss IVF{p['nlist']},PQ{p['m']} nprobe {p['nprobe']} + re-rank 100",
                 "build_s": round(time.perf_counter() - t, 1), "bytes_per_galaxy": size(lambda f: faiss.write_index(ivf, f)),
                 "recall_at_10": recall(rerank(ivf.search(Q, 101)[1])),
                 "p95_ms": p95(lambda q: ivf.search(q, 101)), "load": load()})
    t = time.perf_counter()
    h = hnswlib.Index("l2", X.shape[1])
    h.init_index(n, M=16, ef_construction=100)
    h.add_items(X)
    h.set_ef(64)
    rows.append({"library": "hnswlib M16 ef64", "build_s": round(time.perf_counter() - t, 1),
                 "bytes_per_galaxy": size(h.save_index), "recall_at_10": recall(rerank(h.knn_query(Q, 11)[0].astype(np.int64))),
                 "p95_ms": p95(lambda q: h.knn_query(q, 11)), "load": load()})
    t = time.perf_counter()
    u = Index(ndim=X.shape[1], metric="l2sq", dtype="i8", connectivity=16)
    u.add(np.arange(n), X)
    rows.append({"library": "usearch i8 M16", "build_s": round(time.perf_counter() - t, 1),
                 "bytes_per_galaxy": size(u.save), "recall_at_10": recall(rerank(u.search(Q, 11).keys.astype(np.int64))),
                 "p95_ms": p95(lambda q: u.search(q, 11)), "load": load()})
    for r in rows:
        print(f"  {r['library']}: build {r['build_s']} s, {r['bytes_per_galaxy']} B/galaxy, recall@10 "
              f"{r['recall_at_10']:.3f}, p95 {r['p95_ms']} ms; load {r['load']}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exact-rows", type=int, default=17_736)
    ap.add_argument("--index-rows", type=int, default=100_000, help="0 skips the index")
    ap.add_argument("--outliers", action="store_true")
    ap.add_argument("--outlier-subset", type=int, default=100_000)
    ap.add_argument("--libraries", action="store_true", help="compare faiss, hnswlib and usearch at --index-rows")
    ap.add_argument("--cache", default=None, help="where the index run is written (default: a temp folder); "
                    "with --run, the cache that holds that run")
    ap.add_argument("--run", default=None, metavar="KEY", help="measure the index of this existing run of --cache "
                    "(built, or read when `python -m core index` built it) instead of writing one")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "knn.json"))
    args = ap.parse_args()
    result = {"machine": f"{os.cpu_count()} cores", "load_start": load()}
    if args.exact_rows:
        result["exact"] = exact(args.exact_rows, 10)
    if args.run:
        result["index"] = index_goals(0, Path(args.cache), args.outliers, args.outlier_subset, args.run)
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        if args.index_rows and not args.run:
            result["index"] = index_goals(args.index_rows, Path(tmp), args.outliers, args.outlier_subset)
        if args.libraries:
            result["libraries"] = libraries(args.index_rows or 100_000)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
