"""Failure hunting against its anchors (issue 21), one command, one run:

1. Planted label noise on the demo's synthetic galaxies (features of the demo's ``generic`` and
   ``full`` checkpoints; 10% of the galaxies flipped, two seeds per kind): ``random`` flips (any
   other class) and ``boundary`` flips (to the class a clean out-of-sample probe ranks second,
   drawn with probability proportional to that class's probability: galaxies near a boundary).
   Noise is planted on the true classes (``meta_true_label`` when the demo has volunteer noise).
   Ours (``label_issues.find_issues``) vs cleanlab 2.x ``find_label_issues`` given the same
   out-of-sample probe probabilities: precision of the top 100, recall (and precision) of the
   flagged set.
2. A planted failure slice, 10 seeds: in the demo's metadata, a range of one numeric column
   within one class (30-50% of that class) where predictions are made wrong (60%) on top of a
   background of errors at the full model's real error rate, placed at random (the real errors
   have slices of their own, which would rightly outrank a planted one). Ranked first? F1 of our top slice vs the planted members, and of
   ``sliceline``'s top slice (Slicefinder, the same metadata in 10 quantile bins + the class).
3. Cost at Galaxy10 size: 17,736 x 768 synthetic features (a 10-class Gaussian mixture through a
   random 32-d latent, plus isotropic noise, offset 3; see ``galaxy10_sized``) with 20 metadata
   columns and a 2-d map, written as a features run: the whole ``failures`` computation
   (label_issues + failure_slices, through the cache) vs scikit-learn's
   ``cross_val_predict(LogisticRegression(), X, y, cv=5, method="predict_proba")``, same run.

    PYTHONPATH=. python bench/failures.py [--cache DEMO_CACHE] [--skip-cost]

Writes bench/results/failures.json. The machine's load average is printed beside each number.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.analysis import label_issues as li  # noqa: E402
from timing import load  # noqa: E402
from core.analysis.slices import find_slices  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "failures.json"
NOISE_RATE = 0.10
TOP = 100


def demo_runs(cache) -> dict:
    from core.store import cache as store

    runs = {r["model"]: r for r in store.list_runs(cache)
            if r["kind"] == "features" and str(r.get("dataset", "")).startswith("synthetic:")
            and r.get("model") in ("demo:generic", "demo:full")}
    if len(runs) < 2:
        sys.exit(f"no demo features in {store.cache_dir(cache)}: build the demo first (`python -m core demo`)")
    return runs


def read_run(run) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    from core.analysis.maps.store import load_features
    from core.store import cache as store

    names = store.read_schema(run["path"]).names
    extra = tuple(c for c in names if c.startswith("meta_") or c in ("pred",))
    rows, X = load_features(run, extra)
    truth = rows["meta_true_label"].to_numpy(np.int64) if "meta_true_label" in rows else rows["label"].to_numpy(np.int64)
    return rows, X, truth


def plant_noise(X, y, kind: str, seed: int, n_classes: int = 10) -> np.ndarray:
    rng = np.random.default_rng([seed, 7])
    n, m = len(y), int(NOISE_RATE * len(y))
    noisy = y.copy()
    if kind == "random":
        rows = rng.choice(n, m, replace=False)
        noisy[rows] = (y[rows] + rng.integers(1, n_classes, m)) % n_classes
    else:
        P = li.probe_probs(X, y, n_classes, seed=seed + 100)
        P[np.arange(n), y] = 0
        w = P.max(1)
        rows = rng.choice(n, m, replace=False, p=w / w.sum())
        noisy[rows] = P[rows].argmax(1)
    return noisy


def noise_bench(cache) -> list[dict]:
    from cleanlab.filter import find_label_issues

    out = []
    for model, run in sorted(demo_runs(cache).items()):
        _, X, truth = read_run(run)
        for kind in ("random", "boundary"):
            for seed in (0, 1):
                noisy = plant_noise(X, truth, kind, seed)
                bad = noisy != truth
                t0 = time.perf_counter()
                P = li.probe_probs(X, noisy, 10, seed=0)  # the out-of-sample probabilities both methods get
                t_probe = time.perf_counter() - t0
                ranked = find_label_issues(noisy, P, return_indices_ranked_by="self_confidence")
                cl = find_label_issues(noisy, P, filter_by="prune_by_noise_rate")
                t0 = time.perf_counter()
                ours = li.find_issues(X, noisy, 10, probe=P)
                t_ours = time.perf_counter() - t0 + t_probe
                top = np.argsort(-ours["score"], kind="stable")[:TOP]
                row = {"checkpoint": model, "noise": kind, "seed": seed, "mislabelled": int(bad.sum()),
                       "cleanlab_top100_precision": float(bad[ranked[:TOP]].mean()),
                       "cleanlab_recall": float((cl & bad).sum() / bad.sum()),
                       "cleanlab_flagged": int(cl.sum()), "cleanlab_flagged_precision": float(bad[cl].mean()),
                       "ours_top100_precision": float(bad[top].mean()),
                       "ours_recall": float((ours["flagged"] & bad).sum() / bad.sum()),
                       "ours_flagged": int(ours["flagged"].sum()),
                       "ours_flagged_precision": float(bad[ours["flagged"]].mean()),
                       "ours_seconds": round(t_ours, 2), "load": load()}
                out.append(row)
                print(f"noise {model:13s} {kind:8s} seed {seed}: top-100 precision ours {row['ours_top100_precision']:.2f}"
                      f" cleanlab {row['cleanlab_top100_precision']:.2f} | flagged recall ours {row['ours_recall']:.2f}"
                      f" ({row['ours_flagged']} flagged, precision {row['ours_flagged_precision']:.2f}) cleanlab "
                      f"{row['cleanlab_recall']:.2f} ({row['cleanlab_flagged']}, {row['cleanlab_flagged_precision']:.2f})"
                      f"  load {row['load']}", flush=True)
    return out


def _f1(a, b) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def slice_bench(cache, seeds: int = 10) -> list[dict]:
    from sliceline.slicefinder import Slicefinder

    run = demo_runs(cache)["demo:full"]
    rows, _, truth = read_run(run)
    labels = rows["label"].to_numpy(np.int64)
    real = rows["pred"].to_numpy(np.int64) != labels
    meta = rows[[c for c in rows.columns if c.startswith("meta_") and c != "meta_true_label"]]
    meta = meta.rename(columns=lambda c: c[5:])
    numeric = [c for c in meta.columns if meta[c].dtype != object and meta[c].dtype != bool]
    names = run.get("class_names") or [str(c) for c in range(10)]
    out = []
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 11])
        while True:  # a class and a column with room for a range
            c = int(rng.choice([k for k in range(10) if (labels == k).sum() >= 150]))
            col = str(rng.choice(numeric))
            v = meta[col].to_numpy(np.float64)
            cls = (labels == c) & np.isfinite(v)
            if cls.sum() >= 150 and len(np.unique(v[cls])) >= 20:
                break
        share = rng.uniform(0.3, 0.5)
        start = rng.uniform(0, 1 - share)
        lo, hi = np.quantile(v[cls], [start, start + share])
        planted = cls & (v >= lo) & (v <= hi)
        wrong = rng.permutation(real)  # the real error rate, no structure
        wrong[planted] |= rng.random(planted.sum()) < 0.6
        t0 = time.perf_counter()
        ours = find_slices(wrong, meta, labels, names)
        t_ours = time.perf_counter() - t0
        got = np.zeros(len(wrong), bool)
        if ours:
            got[ours[0]["rows"]] = True
        # sliceline: the same columns in 10 quantile bins (missing -> its own bin) and the class
        binned = {}
        for name in meta.columns:
            x = pd.to_numeric(meta[name], errors="coerce") if meta[name].dtype != bool else meta[name].astype(float)
            q = pd.qcut(x, 10, labels=False, duplicates="drop")
            binned[name] = q.fillna(-1).astype(int).to_numpy()
        binned["class"] = labels
        Xs = pd.DataFrame(binned)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sf = Slicefinder(alpha=0.95, k=1, max_l=2, min_sup=10, verbose=False).fit(Xs.to_numpy(), wrong.astype(float))
            member = np.asarray(sf.transform(Xs.to_numpy()))
        t_sl = time.perf_counter() - t0
        sl = member[:, 0].astype(bool) if member.ndim == 2 and member.shape[1] else np.zeros(len(wrong), bool)
        row = {"seed": seed, "class": names[c], "column": col, "lo": float(lo), "hi": float(hi),
               "planted": int(planted.sum()), "ours_top": ours[0]["description"] if ours else None,
               "ours_f1": _f1(got, planted), "ranked_first": bool(_f1(got, planted) >= 0.5),
               "sliceline_f1": _f1(sl, planted), "ours_seconds": round(t_ours, 2),
               "sliceline_seconds": round(t_sl, 2), "load": load()}
        out.append(row)
        print(f"slice seed {seed}: planted {names[c]} x {col} ({row['planted']} galaxies) | ours F1 {row['ours_f1']:.2f}"
              f" first={row['ranked_first']} ({row['ours_top']}) | sliceline F1 {row['sliceline_f1']:.2f}"
              f"  load {row['load']}", flush=True)
    return out


def galaxy10_sized(n=17_736, d=768, classes=10, seed=0):
    """Features shaped like Galaxy10 DECaLS through a ViT-B: 10 Gaussian classes in a random 32-d
    latent mapped to 768-d, plus isotropic noise and an offset (a linear probe gets ~92%)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    latent = rng.normal(0, 1, (classes, 32))[y] + rng.normal(0, 1.5, (n, 32))
    X = latent @ (rng.normal(0, 1, (32, d)) / 6) + rng.normal(0, 0.5, (n, d)) + 3
    return X.astype(np.float32), y


def cost_bench() -> dict:
    import pyarrow as pa
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from core.analysis.label_issues import label_issues
    from core.analysis.slices import failure_slices
    from core.store import cache as store

    X, y = galaxy10_sized()
    n = len(y)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        cols = {"row": pa.array(np.arange(n)), "id": pa.array([f"g{i:05d}" for i in range(n)]),
                "split": pa.array(np.where(np.arange(n) % 5 == 0, "test", "train")), "label": pa.array(y),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])}
        for j in range(20):
            cols[f"meta_col{j}"] = pa.array(rng.normal(0, 1, n))
        prov = {"kind": "features", "dataset": "bench:galaxy10-sized", "model": "bench:none", "mode": "generic",
                "pooling": "cls", "split": "all", "class_names": [f"class {c}" for c in range(10)], "dim": X.shape[1]}
        store.write_parquet(store.cache_dir(tmp) / "features" / "bench.parquet", pa.table(cols), prov)
        xy = X[:, :2] - X[:, :2].mean(0)
        store.write_parquet(store.cache_dir(tmp) / "projections" / "benchmap.parquet",
                            pa.table({"row": np.arange(n), "id": cols["id"], "x": xy[:, 0], "y": xy[:, 1]}),
                            {"kind": "projection", "features_run": "bench", "method": "tsne"})
        l0 = load()
        t0 = time.perf_counter()
        issues = label_issues("bench", tmp)
        slices = failure_slices("bench", tmp)
        ours = time.perf_counter() - t0
        l1 = load()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            P = cross_val_predict(LogisticRegression(), X, y, cv=5, method="predict_proba")
            base = time.perf_counter() - t0
    row = {"shape": [n, X.shape[1]], "ours_seconds": round(ours, 2), "sklearn_cross_val_predict_seconds": round(base, 2),
           "ratio": round(ours / base, 3), "ours_flagged": int(issues["flagged"].sum()), "slices": len(slices),
           "probe_accuracy_sklearn": float((P.argmax(1) == y).mean()), "load_ours": l0, "load_sklearn": l1}
    print(f"cost at {n} x {X.shape[1]}: failures (label issues + slices) {ours:.1f} s (load {l0}), "
          f"sklearn cross_val_predict(LogisticRegression, 5 folds) {base:.1f} s (load {l1}): ratio {row['ratio']:.2f}",
          flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="the demo's cache (default: $EXPLORER_CACHE or ./cache)")
    ap.add_argument("--skip-cost", action="store_true", help="leave out the 17,736 x 768 cost comparison")
    ap.add_argument("--only", choices=("noise", "slices", "cost"),
                    help="run one part; the others are kept from bench/results/failures.json")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where to write the results (JSON)")
    args = ap.parse_args()
    print(f"load {load()} on {os.cpu_count()} cores", flush=True)
    result = json.loads(args.out.read_text()) if args.only and args.out.is_file() else {}
    parts = {"noise": lambda: noise_bench(args.cache), "slices": lambda: slice_bench(args.cache), "cost": cost_bench}
    for name, fn in parts.items():
        if (args.only or name) == name and not (name == "cost" and args.skip_cost):
            result[name] = fn()
    if "noise" not in result or "slices" not in result:
        args.out.write_text(json.dumps(result, indent=1, default=str))
        return 0
    noise = pd.DataFrame(result["noise"])
    summary = noise.groupby(["checkpoint", "noise"])[["ours_top100_precision", "cleanlab_top100_precision",
                                                       "ours_recall", "cleanlab_recall"]].mean().round(3)
    print(summary.to_string())
    sl = pd.DataFrame(result["slices"])
    print(f"slices: ranked first {int(sl['ranked_first'].sum())}/{len(sl)}, mean F1 ours {sl['ours_f1'].mean():.2f} "
          f"(min {sl['ours_f1'].min():.2f}), sliceline {sl['sliceline_f1'].mean():.2f}; ours >= sliceline in "
          f"{int((sl['ours_f1'] >= sl['sliceline_f1']).sum())}/{len(sl)}")
    if "cost" in result:
        c = result["cost"]
        print(f"cost ratio {c['ratio']:.2f} (ours {c['ours_seconds']} s, sklearn {c['sklearn_cross_val_predict_seconds']} s)")
    result["summary"] = {"noise": summary.reset_index().to_dict("records"),
                         "slices_ranked_first": int(sl["ranked_first"].sum()), "slices_mean_f1": float(sl["ours_f1"].mean()),
                         "sliceline_mean_f1": float(sl["sliceline_f1"].mean())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
