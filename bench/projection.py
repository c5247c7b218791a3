"""Map speed and neighbourhood quality at Galaxy10's size: our t-SNE against the
paper's sklearn t-SNE on the same raw matrix, in the same run; UMAP and PCA too.

    python bench/projection.py                 # 17,736 x 768, ~4-10 min on 2 cores (sklearn dominates)
    python bench/projection.py --n 3000        # quick look
    python bench/projection.py --pca50         # also openTSNE's defaults on PCA-50 features
    python bench/projection.py --sizes 2000,5000,8000,17736   # t-SNE only: ours vs sklearn per size
    python bench/projection.py --sizes 2000,8000 --both       # also openTSNE and the torch port apart

Features are a seeded Gaussian mixture shaped like Galaxy10 seen by DINOv2-B:
10 classes in Galaxy10's proportions, each class spread along its own 12
directions (anisotropic), 16 directions shared by all classes, isotropic noise.
Goal (issue): ours <= 0.25 x sklearn's time, kNN preservation >= sklearn's - 0.02.
Ours runs before and after sklearn (the machine is shared; the load is printed);
the ratio uses their mean. Writes bench/results/projection-<n>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GALAXY10_COUNTS = [1081, 1853, 2645, 2027, 334, 2043, 1829, 2628, 1423, 1873]


def clustered_features(n=17736, d=768, seed=0):
    """(X float32 (n, d), labels) of the seeded mixture described above."""
    rng = np.random.default_rng(seed)
    counts = np.floor(np.array(GALAXY10_COUNTS) / sum(GALAXY10_COUNTS) * n).astype(int)
    counts[: n - counts.sum()] += 1
    labels = np.repeat(np.arange(10), counts)
    rng.shuffle(labels)
    means = rng.normal(size=(10, d)) * 0.08
    shared = rng.normal(size=(16, d)) * (1.0 / np.sqrt(np.arange(1, 17)))[:, None] * 0.5
    X = rng.normal(size=(n, 16)) @ shared
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        load = rng.normal(size=(12, d)) * (1.0 / np.sqrt(np.arange(1, 13)))[:, None] * 0.6
        X[idx] += means[c] + rng.normal(size=(len(idx), 12)) @ load
    X += rng.normal(size=(n, d)) * 0.25
    return X.astype(np.float32), labels


def timed(fn):
    load = os.getloadavg()[0]
    start = time.perf_counter()
    Y = np.asarray(fn(), dtype=np.float32)
    return Y, time.perf_counter() - start, load


def sizes_table(sizes, dim, both=False, save=None):
    """t-SNE at each size: ours (``core.analysis.maps.projection.tsne`` on the CPU, whichever
    implementation it picks) before and after sklearn's, in the same run; with
    ``both`` also openTSNE and the torch port forced. Goal (issue 13): ours <=
    0.5 x sklearn at every size, <= 0.25 x at 17,736; kNN preservation >= sklearn's - 0.02."""
    from sklearn.manifold import TSNE

    from core.analysis.maps import projection as proj

    table = []
    for n in sizes:
        X, _ = clustered_features(n, dim)
        runs = {}

        def record(name, fn):
            Y, seconds, load = timed(fn)
            q = proj.map_quality(X, Y)
            runs.setdefault(name, []).append(dict(seconds=round(seconds, 3), load=load, knn_preservation=q["knn_preservation"]))
            print(f"  {n:>7,}  {name:<34} {seconds:7.1f} s   kNN preservation {q['knn_preservation']:.4f}   "
                  f"(load {load:.1f})", flush=True)

        impl = proj.implementation_for(n, "cpu")
        record(f"ours ({impl})", lambda: proj.tsne(X, device="cpu"))
        record("sklearn TSNE (paper)", lambda: TSNE(perplexity=30, init="pca", random_state=42).fit_transform(X))
        record(f"ours ({impl})", lambda: proj.tsne(X, device="cpu"))
        if both:
            from core.analysis.maps import tsne_torch

            record("openTSNE (as before)", lambda: _opentsne(proj, X))
            record("torch port (cpu)", lambda: tsne_torch.tsne(X, device="cpu"))
        ours = runs[f"ours ({impl})"]
        sk = runs["sklearn TSNE (paper)"][0]
        seconds = float(np.mean([r["seconds"] for r in ours]))
        row = dict(n=n, implementation=impl, ours_seconds=round(seconds, 3), sklearn_seconds=sk["seconds"],
                   ratio=round(seconds / sk["seconds"], 4), ours_knn=round(ours[0]["knn_preservation"], 4),
                   sklearn_knn=round(sk["knn_preservation"], 4), runs=runs)
        goal = 0.25 if n >= 17736 else 0.5
        row["goal_met"] = bool(row["ratio"] <= goal and row["ours_knn"] >= row["sklearn_knn"] - 0.02)
        table.append(row)
        if save:
            save(table)  # after every size: a long run interrupted keeps what it measured
    print(f"\n{'points':>8} {'implementation':<12} {'ours s':>8} {'sklearn s':>10} {'ratio':>7} {'kNN ours':>9} "
          f"{'kNN sklearn':>12}  goal")
    for r in table:
        goal = "<= 0.25" if r["n"] >= 17736 else "<= 0.5"
        print(f"{r['n']:>8,} {r['implementation']:<12} {r['ours_seconds']:>8.1f} {r['sklearn_seconds']:>10.1f} "
              f"{r['ratio']:>7.3f} {r['ours_knn']:>9.4f} {r['sklearn_knn']:>12.4f}  {goal}: "
              f"{'met' if r['goal_met'] else 'NOT met'}")
    return table


def _opentsne(proj, X):
    import unittest.mock as mock

    with mock.patch.object(proj, "implementation_for", lambda n, device=None: "openTSNE"):
        return proj.tsne(X, device="cpu")


def main(argv=None):
    from core.analysis.maps import projection as proj  # here, so clustered_features imports without openTSNE (GPU machine)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=17736)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--skip-sklearn", action="store_true", help="leave out sklearn's t-SNE (no ratio)")
    ap.add_argument("--pca50", action="store_true", help="also time openTSNE's defaults on PCA-50 features")
    ap.add_argument("--sizes", help="comma-separated sizes: t-SNE only, ours vs sklearn at each")
    ap.add_argument("--both", action="store_true", help="with --sizes: also openTSNE and the torch port apart")
    a = ap.parse_args(argv)
    if a.sizes:
        sizes = [int(s) for s in a.sizes.split(",")]
        print(f"t-SNE on {os.cpu_count()} cores, {a.dim} features, sizes {sizes}", flush=True)
        out = Path(__file__).resolve().parent / "results" / f"projection-sizes-{'-'.join(map(str, sizes))}.json"
        out.parent.mkdir(exist_ok=True)

        def save(table):
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(dict(dim=a.dim, cores=os.cpu_count(), sizes=table), indent=1))
            tmp.replace(out)

        sizes_table(sizes, a.dim, a.both, save)
        print(f"wrote {out}")
        return

    X, labels = clustered_features(a.n, a.dim)
    print(f"features {X.shape[0]:,} x {X.shape[1]} (10 classes), {os.cpu_count()} cores", flush=True)
    rows = {}

    def record(name, fn):
        Y, seconds, load = timed(fn)
        q = proj.map_quality(X, Y)
        rows.setdefault(name, []).append(dict(seconds=seconds, load=load, **q))
        print(f"{name:<32} {seconds:8.1f} s   kNN preservation {q['knn_preservation']:.4f}   "
              f"trustworthiness {q['trustworthiness']:.4f}   (load {load:.1f})", flush=True)

    record("ours: t-SNE", lambda: proj.tsne(X))
    if not a.skip_sklearn:
        from sklearn.manifold import TSNE

        record("sklearn TSNE (paper)", lambda: TSNE(perplexity=30, init="pca", random_state=42).fit_transform(X))
        record("ours: t-SNE", lambda: proj.tsne(X))
    if a.pca50:
        import openTSNE
        from sklearn.decomposition import PCA

        record("openTSNE defaults on PCA-50", lambda: openTSNE.TSNE(n_jobs=-1, random_state=42).fit(
            PCA(50, random_state=42).fit_transform(X)))
    record("ours: UMAP", lambda: proj.umap(X))
    record("ours: PCA", lambda: proj.pca(X))

    result = {"n": a.n, "dim": a.dim, "cores": os.cpu_count(), "runs": rows}
    if not a.skip_sklearn:
        ours = float(np.mean([r["seconds"] for r in rows["ours: t-SNE"]]))
        sk = rows["sklearn TSNE (paper)"][0]
        ratio = ours / sk["seconds"]
        drop = sk["knn_preservation"] - rows["ours: t-SNE"][0]["knn_preservation"]
        result.update(ours_seconds=ours, sklearn_seconds=sk["seconds"], ratio=ratio, knn_preservation_drop=drop,
                      goal_met=bool(ratio <= 0.25 and drop <= 0.02))
        print(f"\nours {ours:.1f} s (mean of {len(rows['ours: t-SNE'])}) vs sklearn {sk['seconds']:.1f} s: "
              f"ratio {ratio:.3f} (goal <= 0.25); kNN preservation ours - sklearn = {-drop:+.4f} (goal >= -0.02): "
              f"{'goal met' if result['goal_met'] else 'goal NOT met'}")
    out = Path(__file__).resolve().parent / "results" / f"projection-{a.n}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
