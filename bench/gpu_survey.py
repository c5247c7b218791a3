"""The GPU at its limit (issue 24), one stage per call so bench/gpu_session.sh can
time-box each: the matmul-rate baseline, the t-SNE table (17,736 / 1M / 10M), and a
survey-size pipeline (render -> extract -> t-SNE -> outliers) with per-stage throughput.

    python bench/gpu_survey.py matmul              # the GPU's TF32 / bf16 / fp32 matmul rate
    python bench/gpu_survey.py tsne                # 17,736 (first call and warm) and 1,000,000 x 768
    python bench/gpu_survey.py tsne10m             # 10,000,000 x 768 synthetic, approximate kNN, recall
    python bench/gpu_survey.py pipeline            # 200,000 galaxies at 224 px through a DINOv2-B-sized model
    python bench/gpu_survey.py all --smoke         # every stage at tiny sizes, on the CPU if no GPU

Every result is printed as one JSON line as soon as it exists and appended to
bench/results/gpu-survey-<device>.json ($SURVEY_RESULTS: another folder), so a stage cut off by its time box keeps
what it measured. Speeds are also given as a ratio to the matmul rate measured by
``matmul`` on the same GPU in the same session (read back from that file).

Features: bench/projection.py's Galaxy10-shaped mixture (numpy, 17,736 rows, the
same as bench/gpu_tsne.py) or the same recipe generated on the device in torch
(1M, 10M: numpy would need 60 GB of host memory at 10M). Images: random uint8
pixels (a pool of 2,048 images, gathered per batch as bench/extract.py does);
weights random (speed does not depend on them).
Needs torch, numpy, pandas, pyarrow, transformers; openTSNE, scikit-learn and ray
are used when importable (the GPU machine lacks openTSNE and ray: carry wheels).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

GOALS = {"tsne_17736_warm_s": 1.0, "tsne_1m_knn_s": 6.0, "tsne_1m_s": 20.0, "tsne_10m_s": 600.0,
         "knn_preservation_1m_min": 0.067, "opentsne_gap_17736": 0.01}
SMOKE = dict(tsne=(300, 1200), tsne10m=2000, pipeline=48, matmul=256)
SMOKE_ITERS = dict(early_exaggeration_iter=30, n_iter=30)  # --smoke: checks the code runs, not the maps


# ---------------------------------------------------------------- plumbing


class Results:
    """JSON lines on stdout and a JSON list in bench/results/gpu-survey-<device>.json."""

    def __init__(self, device_name: str, smoke: bool):
        slug = "".join(c if c.isalnum() else "-" for c in device_name.lower()).strip("-")
        folder = Path(os.environ.get("SURVEY_RESULTS") or ROOT / "bench" / "results")
        self.path = folder / f"gpu-survey-{slug}{'-smoke' if smoke else ''}.json"
        self.path.parent.mkdir(exist_ok=True)
        self.rows = json.loads(self.path.read_text()) if self.path.exists() else []
        self.device, self.smoke = device_name, smoke

    def add(self, **row):
        row = dict(device=self.device, smoke=self.smoke, load=round(os.getloadavg()[0], 2), **row)
        self.rows = [r for r in self.rows if (r.get("stage"), r.get("n"), r.get("what")) !=
                     (row.get("stage"), row.get("n"), row.get("what"))] + [row]
        print(json.dumps(row), flush=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.rows, indent=1))
        tmp.replace(self.path)
        return row

    def matmul_rate(self, precision="tf32") -> float | None:
        rates = [r for r in self.rows if r.get("stage") == "matmul" and r.get("what") == precision]
        return rates[-1]["tflops"] if rates else None


def sync(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def iters(smoke: bool) -> dict:
    return SMOKE_ITERS if smoke else {}


def clock(device, fn):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def device_features(n: int, d: int = 768, seed: int = 0, device="cuda"):
    """(n, d) float32 tensor on ``device``: bench/projection.py's recipe (10 classes in
    Galaxy10's proportions, 12 own + 16 shared directions, noise 0.25), in torch, by chunks."""
    import torch

    from projection import GALAXY10_COUNTS

    g = torch.Generator(device=device).manual_seed(seed)
    p = torch.tensor(GALAXY10_COUNTS, dtype=torch.float64, device=device)
    cum = torch.cumsum(p / p.sum(), 0)
    labels = torch.searchsorted(cum, torch.rand(n, generator=g, device=device, dtype=torch.float64)).clamp_(max=9)
    means = torch.randn(10, d, generator=g, device=device) * 0.08
    shared = torch.randn(16, d, generator=g, device=device) * (0.5 / torch.arange(1, 17, device=device) ** 0.5)[:, None]
    loads = torch.randn(10, 12, d, generator=g, device=device) * (0.6 / torch.arange(1, 13, device=device) ** 0.5)[None, :, None]
    X = torch.empty(n, d, device=device)
    step = 1 << 15  # loads[c] is (rows, 12, d): 1.2 GB at this step
    for s in range(0, n, step):
        c = labels[s:s + step]
        z = torch.randn(len(c), 12, generator=g, device=device)
        X[s:s + step] = (torch.randn(len(c), 16, generator=g, device=device) @ shared + means[c]
                         + torch.einsum("nj,njd->nd", z, loads[c])
                         + torch.randn(len(c), d, generator=g, device=device) * 0.25)
    return X


def preservation_on_device(X, Y, sample: int = 2000, k: int = 10, seed: int = 0, exact=None) -> float:
    """kNN preservation (k) of map Y for ``sample`` seeded rows, neighbours searched
    exactly on the device against every row (features and map)."""
    import torch

    n = len(X)
    q = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(sample, n)].to(X.device)
    fx = exact if exact is not None else exact_rows(X, q, k)
    fy = exact_rows(Y, q, k)
    return float(sum(len(set(a) & set(b)) for a, b in zip(fx.tolist(), fy.tolist()))) / (len(q) * k)


def exact_rows(X, q, k, step: int = 1 << 20):
    """Exact k nearest rows of X to rows ``q`` (itself excluded), in float32, by chunks of X."""
    import torch

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        Q = X[q].float()
        best_d = torch.full((len(q), k), float("inf"), device=X.device)
        best_i = torch.zeros((len(q), k), dtype=torch.int64, device=X.device)
        for s in range(0, len(X), step):
            B = X[s:s + step].float()
            D = (B * B).sum(1)[None, :] - 2 * Q @ B.T
            own = (q >= s) & (q < s + len(B))
            D[own.nonzero().flatten(), (q[own] - s)] = float("inf")
            d, i = torch.topk(D, min(k, len(B)), dim=1, largest=False)
            cat_d, cat_i = torch.cat([best_d, d], 1), torch.cat([best_i, i + s], 1)
            best_d, o = torch.topk(cat_d, k, dim=1, largest=False)
            best_i = torch.gather(cat_i, 1, o)
        return best_i.cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


# ---------------------------------------------------------------- stages


def stage_matmul(res: Results, device, smoke):
    """TFLOP/s of square matmuls: TF32, bf16, strict fp32 (the ratios' denominator)."""
    import torch

    n = SMOKE["matmul"] if smoke else 8192
    for what, dtype, tf32 in (("tf32", torch.float32, True), ("bf16", torch.bfloat16, False),
                              ("fp32", torch.float32, False)):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            A = torch.randn(n, n, device=device, dtype=dtype)
            B = torch.randn(n, n, device=device, dtype=dtype)
            for _ in range(3):
                A @ B
            reps = 3 if smoke else 20
            _, s = clock(device, lambda: [A @ B for _ in range(reps)])
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        res.add(stage="matmul", what=what, n=n, tflops=round(2 * n ** 3 * reps / s / 1e12, 4))


def stage_tsne(res: Results, device, smoke, sizes=None):
    """17,736: first call and warm (graphs on and off), stages, kNN certificate, openTSNE's
    quality when importable; 1M: kNN and whole t-SNE, kNN preservation, kNN chunk sweep."""
    import torch

    from core.analysis.maps import tsne_torch
    from projection import clustered_features

    small, big = sizes or (SMOKE["tsne"] if smoke else (17736, 1_000_000))
    rate = res.matmul_rate("tf32")
    X, _ = clustered_features(small, 768)
    Xd = torch.as_tensor(X, device=device)
    for what, kw in (("first call", {}), ("warm", {}), ("warm, no CUDA graphs", {"graphs": False})):
        timings = {}
        Y, s = clock(device, lambda: tsne_torch.tsne(X, device=device, timings=timings, **kw, **iters(smoke)))
        q = preservation_on_device(Xd, torch.as_tensor(Y, device=device))
        row = res.add(stage="tsne", what=what, n=small, seconds=round(s, 3), stages=timings,
                      knn_preservation=round(q, 4))
        if what == "warm":
            warm = row
    # the TF32 certificate on this device: same neighbours as float32
    stats = {}
    i32, d32 = tsne_torch.device_knn(Xd, 90, precision="fp32")
    (i_tf, d_tf), s_tf = clock(device, lambda: tsne_torch.device_knn(Xd, 90, precision="tf32", stats=stats))
    res.add(stage="tsne", what="knn tf32 certificate", n=small, seconds=round(s_tf, 3),
            rows_searched_again=stats["rows_searched_again"],
            same_as_fp32=round(float((i32 == i_tf).float().mean()), 6),
            max_d2_rel_diff=float(((d32 - d_tf).abs() / d32.clamp(min=1e-6)).max()))
    try:
        import openTSNE

        from gpu_tsne import run_opentsne

        Yo, so, _ = run_opentsne(X)
        qo = preservation_on_device(Xd, torch.as_tensor(np.asarray(Yo, np.float32), device=device))
        res.add(stage="tsne", what=f"openTSNE {openTSNE.__version__} (CPU)", n=small, seconds=round(so, 2),
                knn_preservation=round(qo, 4), ours_minus_openTSNE=round(warm["knn_preservation"] - qo, 4))
    except ImportError:
        res.add(stage="tsne", what="openTSNE (CPU)", n=small, skipped="openTSNE is not installed here")
    del Xd
    # 1M (or the smoke size): features made on the device
    Xb = device_features(big, device=device)
    # kNN chunk sizes, measured on a slice (the search's cost is per chunk, rows x all points)
    sub = Xb[:min(big, 200_000)]
    best = None
    for rows in (256, 1024, 4096, 16384):
        if rows > len(sub):
            continue
        _, s = clock(device, lambda: tsne_torch.device_knn(sub, 90, chunk_rows=rows))
        res.add(stage="tsne", what=f"knn chunk {rows} rows", n=len(sub), seconds=round(s, 3))
        best = (s, rows) if best is None or s < best[0] else best
    options = dict(chunk_rows=best[1]) if best else {}
    for blk in ((256, 1024) if smoke else (4096, 32768)):  # two-round candidate selection (device_knn's block)
        if blk >= len(sub) or best is None:
            continue
        _, s = clock(device, lambda: tsne_torch.device_knn(sub, 90, chunk_rows=best[1], block=blk))
        res.add(stage="tsne", what=f"knn chunk {best[1]} rows, blocks of {blk}", n=len(sub), seconds=round(s, 3))
        if s < best[0]:
            best, options = (s, best[1]), dict(chunk_rows=best[1], block=blk)
    # the fastest measured setting, scaled to this size's row width (chunks hold rows x n distances)
    if "chunk_rows" in options:
        options["chunk_rows"] = max(16, options["chunk_rows"] * len(sub) // big)
    tsne_torch.KNN_OPTIONS.update(options)
    timings = {}
    Y, s = clock(device, lambda: tsne_torch.tsne(Xb, timings=timings, **iters(smoke)))
    knn_s = timings.get("knn")
    flops = 2 * big * big * 768
    q = preservation_on_device(Xb, torch.as_tensor(Y, device=device))
    res.add(stage="tsne", what="whole", n=big, seconds=round(s, 2), stages=timings, knn_preservation=round(q, 4),
            knn_options=options,
            knn_tflops=round(flops / knn_s / 1e12, 1) if knn_s else None,
            knn_share_of_tf32_rate=round(flops / knn_s / 1e12 / rate, 3) if knn_s and rate else None,
            goals=dict(knn_s=GOALS["tsne_1m_knn_s"], whole_s=GOALS["tsne_1m_s"],
                       preservation_min=GOALS["knn_preservation_1m_min"]) if big == 1_000_000 else None)


def stage_tsne10m(res: Results, device, smoke, n=None, clusters=1024, probes=32):
    """10M x 768 synthetic features: approximate kNN (tsne_torch.approximate_knn), its
    recall on 1,000 rows against exact search, the whole t-SNE and its kNN preservation."""
    import torch

    from core.analysis.maps import tsne_torch

    n = n or (SMOKE["tsne10m"] if smoke else 10_000_000)
    if smoke:
        clusters, probes = 16, 6
    t0 = time.perf_counter()
    X, s_gen = clock(device, lambda: device_features(n, device=device, seed=1))
    res.add(stage="tsne10m", what="features generated", n=n, seconds=round(s_gen, 1),
            gpu_mem_gb=round(torch.cuda.memory_allocated() / 2**30, 1) if torch.device(device).type == "cuda" else None)
    (idx, d2), s_knn = clock(device, lambda: tsne_torch.approximate_knn(X, 90, clusters=clusters, probes=probes))
    q = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:1000].to(X.device)
    exact = exact_rows(X, q, 10)
    got = idx[q, :10].cpu()
    recall = float(sum(len(set(a) & set(b)) for a, b in zip(got.tolist(), exact.tolist()))) / (len(q) * 10)
    res.add(stage="tsne10m", what="approximate knn", n=n, seconds=round(s_knn, 1), recall_at_10=round(recall, 4),
            clusters=clusters, probes=probes)
    timings = {}
    Y, s = clock(device, lambda: tsne_torch.tsne(X, neighbours=(idx, d2), timings=timings, **iters(smoke)))
    del idx, d2
    pres = preservation_on_device(X, torch.as_tensor(Y, device=device), sample=1000, exact=exact)
    res.add(stage="tsne10m", what="whole", n=n, seconds=round(time.perf_counter() - t0 - s_gen, 1),
            layout_stages=timings, knn_preservation=round(pres, 4), goal_s=GOALS["tsne_10m_s"],
            peak_gpu_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 1)
            if torch.device(device).type == "cuda" else None)


def stage_pipeline(res: Results, device, smoke, n=None, engine="auto"):
    """n galaxies at 224 px: images in memory -> features (DINOv2-B-sized, random
    weights; Ray engine when importable, else in-process) into a sharded run ->
    GPU t-SNE -> outlier scores; each stage's items/s and the stage bounding the whole."""
    import torch

    from core.analysis import outliers
    from core.analysis.maps import tsne_torch
    from core.analysis.maps.store import load_features
    from core.extract import features

    from extract import make_checkpoint, memory_dataset

    n = n or (SMOKE["pipeline"] if smoke else 200_000)
    model = "tiny" if smoke else "dinov2-base"
    size = 64 if smoke else 224
    root = Path(tempfile.mkdtemp(prefix="gpu-survey-"))
    stages = {}
    try:
        if engine == "auto":  # Ray when it is installed (the path); the smoke run stays in-process
            try:
                import ray  # noqa: F401

                engine = "local" if smoke else "ray"
            except ImportError:
                engine = "local"
        (ds, ckpt), s = clock(device, lambda: (memory_dataset(n, size=size), make_checkpoint(root, model, device)))
        stages["images + model"] = dict(seconds=round(s, 2))
        res.add(stage="pipeline", what="images in memory + model", n=n, seconds=round(s, 2), model=model,
                image_size=size)
        warm = memory_dataset(min(n, 512), size=size, seed=1)  # kernels, allocator: as bench/extract.py
        features.extract(warm, f"dir:{ckpt}", device=device, cache=root / "cache", progress=False,
                         log=lambda *_: None)
        opts = dict(engine=engine, shard_rows=max(16, n // 8))
        if engine == "ray":
            opts["ray_options"] = {}
        (path, prov, _), s = clock(device, lambda: features.extract(
            ds, f"dir:{ckpt}", device=device, cache=root / "cache", progress=False, log=lambda *_: None, **opts))
        stages["extract"] = dict(seconds=round(s, 2), items_per_s=round(n / s, 1))
        res.add(stage="pipeline", what=f"extract ({engine} engine, sharded)", n=n, seconds=round(s, 2),
                images_per_s=round(n / s, 1), sharded=path.is_dir(), dtype=prov.get("dtype"),
                note=None if engine == "ray" else "in-process engine (ray not installed here, or --smoke)")
        (rows_X), s = clock(device, lambda: load_features({"path": path, "dim": prov.get("dim")}))
        X = rows_X[1]
        stages["read features"] = dict(seconds=round(s, 2), items_per_s=round(n / s, 1))
        res.add(stage="pipeline", what="read features", n=n, seconds=round(s, 2), dim=int(X.shape[1]))
        perplexity = min(30.0, (n - 1) / 3)
        timings = {}
        Y, s = clock(device, lambda: tsne_torch.tsne(X, perplexity=perplexity, device=device, timings=timings,
                                                     **iters(smoke)))
        stages["t-SNE"] = dict(seconds=round(s, 2), items_per_s=round(n / s, 1))
        res.add(stage="pipeline", what="t-SNE", n=n, seconds=round(s, 2), points_per_s=round(n / s, 1), stages=timings)
        _, s = clock(device, lambda: outliers.knn_distance(X, 10))
        stages["outliers: kNN"] = dict(seconds=round(s, 2), items_per_s=round(n / s, 1))
        res.add(stage="pipeline", what="outliers: kNN distance", n=n, seconds=round(s, 2), points_per_s=round(n / s, 1))
        try:
            _, s = clock(device, lambda: outliers.isolation_forest(X))
            stages["outliers: isolation forest"] = dict(seconds=round(s, 2), items_per_s=round(n / s, 1))
            res.add(stage="pipeline", what="outliers: isolation forest (CPU)", n=n, seconds=round(s, 2),
                    points_per_s=round(n / s, 1))
        except ImportError as e:
            res.add(stage="pipeline", what="outliers: isolation forest (CPU)", n=n, skipped=str(e))
    finally:
        timed = {k: v for k, v in stages.items() if "items_per_s" in v}
        if timed:
            bound = min(timed, key=lambda k: timed[k]["items_per_s"])
            res.add(stage="pipeline", what="summary", n=n, stages=stages, bounded_by=bound,
                    whole_seconds=round(sum(v["seconds"] for v in stages.values()), 1))
        shutil.rmtree(root, ignore_errors=True)
        del torch


STAGES = {"matmul": stage_matmul, "tsne": stage_tsne, "tsne10m": stage_tsne10m, "pipeline": stage_pipeline}


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stages", nargs="+", choices=[*STAGES, "all"])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; runs on the CPU when there is no GPU")
    ap.add_argument("--device", help="default: cuda (cpu with --smoke when no GPU)")
    ap.add_argument("--engine", default="auto", choices=("auto", "local", "ray"),
                    help="pipeline's extraction engine (auto: ray when installed, in-process with --smoke)")
    a = ap.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not a.smoke:
        print("bench/gpu_survey.py needs a CUDA GPU (torch sees none); --smoke runs it on the CPU at tiny sizes")
        return 2
    if device == "cpu":
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    res = Results(name, a.smoke)
    failed = []
    for stage in (list(STAGES) if "all" in a.stages else a.stages):
        print(f"--- {stage}", flush=True)
        t = time.perf_counter()
        try:
            STAGES[stage](res, device, a.smoke, **({"engine": a.engine} if stage == "pipeline" else {}))
        except Exception as e:  # fail fast, keep going with the next stage: partial results are printed above
            import traceback

            traceback.print_exc()
            res.add(stage=stage, what="FAILED", error=f"{type(e).__name__}: {e}"[:500])
            failed.append(stage)
        print(f"--- {stage} done in {time.perf_counter() - t:.1f} s", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"wrote {res.path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
