"""Batched feature extraction -> one parquet per (dataset, checkpoint, pooling, split).

The pipeline overlaps its three stages: a reader thread pulls uint8 batches from
the Dataset (pinned when the GPU is used), the main thread moves them to the device,
resizes/normalises there and runs the model (bf16 + SDPA on CUDA, fp32 on CPU),
and a writer thread copies results back and appends parquet row groups. Memory
stays bounded by the queue depths whatever the dataset size.

Only torch, transformers, numpy, pandas and pyarrow are imported here, so the GPU
path runs on a machine without datasets, h5py, Streamlit or umap.
"""
from __future__ import annotations

import contextlib
import platform
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from . import __version__
from . import cache as store
from . import layerfeatures
from .data import normalize_ref, open_dataset
from .data.base import SourceError
from .errors import UserError
from .models import POOLINGS, describe, fingerprint_dir, load_checkpoint, resolve
from .preprocess import load_batch

MODES = ("generic", "head", "full")
_DONE = object()


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no GPU: use --device cpu or auto")
    return device


def plan(dataset, model_ref: str, pooling: str = "auto", split: str = "all", mode: str | None = None, cache=None):
    """Everything that identifies a features file, without loading the model.

    Returns (path, info) where info holds the fingerprints, resolved pooling and mode.
    """
    model_ref = normalize_ref(model_ref)
    ckpt_path = resolve(model_ref, cache)
    desc = describe(ckpt_path)
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    pooling = desc["default_pooling"] if pooling == "auto" else pooling
    mode = mode or desc["mode"] or ("full" if desc["has_head"] else "generic")
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if len(dataset.rows(split)) == 0:  # also validates the split name
        raise UserError(f"split {split!r} of {dataset.source} has no images")
    info = dict(
        dataset=dataset.source, dataset_fingerprint=dataset.fingerprint, model=model_ref,
        model_fingerprint=fingerprint_dir(ckpt_path), family=desc["family"], mode=mode,
        pooling=pooling, split=split,
    )
    key = store.key_of(info["dataset_fingerprint"], info["model_fingerprint"], pooling, split, mode)
    return store.path_for(store.cache_dir(cache), "features", key), info


def extract(dataset_ref, model_ref: str, mode: str | None = None, split: str = "all", pooling: str = "auto",
            device: str = "auto", batch_size: int | None = None, cache=None, progress: bool = True,
            compile: bool = False, workers: int | None = None, log=print, layers: str | None = None) -> tuple:
    """Compute (or find cached) features. Returns (parquet path, provenance, was_cached).

    ``dataset_ref`` is a reference string or an opened Dataset. A cache hit loads no
    model; two identical requests at once compute once (file lock). ``layers``
    ("all", "last", "1,4,9-12"): also store those blocks' pooled features from the
    same pass (see ``core.layerfeatures``).
    """
    ds = open_dataset(dataset_ref) if isinstance(dataset_ref, str) else dataset_ref
    path, info = plan(ds, model_ref, pooling, split, mode, cache)
    model_ref = info["model"]
    info["layers"] = layerfeatures.requested(resolve(model_ref, cache), layers, info["family"])

    def hit():
        prov = cached(path)
        return prov if prov and (not info["layers"] or layerfeatures.cached(
            layerfeatures.layers_path(path), info["layers"])) else None

    prov = hit()
    if prov:
        return path, prov, True
    with store.compute_lock(path):
        prov = hit()  # someone else may have finished while we waited
        if prov:
            return path, prov, True
        old = layerfeatures.cached(layerfeatures.layers_path(path), None)
        if info["layers"] and old:  # keep the blocks stored before
            info["layers"] = sorted(set(info["layers"]) | set(old.get("layers", [])))
        if path.exists() and not cached(path):
            log(f"cached features {path.name} are damaged: recomputing")
        prov = _compute(ds, model_ref, info, path, _pick_device(device), batch_size, cache, progress, compile, log,
                        workers)
    return path, prov, False


def cached(path) -> dict | None:
    """Provenance of a complete, intact features file; None means compute it."""
    prov = store.provenance(path)
    if prov is None or prov.get("kind") != "features":
        return None
    return prov if store.read_table(path, columns=None) is not None else None


def _schema(dim: int, n_classes: int, meta: pa.Schema) -> pa.Schema:
    fields = [
        pa.field("row", pa.int64()), pa.field("id", pa.string()), pa.field("split", pa.string()),
        pa.field("label", pa.int64()), pa.field("embedding", pa.list_(pa.float32(), dim)),
    ]
    if n_classes:
        fields += [pa.field("pred", pa.int64()), pa.field("confidence", pa.float32()),
                   pa.field("probs", pa.list_(pa.float32(), n_classes))]
    return pa.schema(fields + list(meta))


def _meta_table(ds, rows) -> pa.Table:
    if ds.metadata is None or ds.metadata.empty:
        return pa.table({})
    meta = ds.metadata.iloc[rows].reset_index(drop=True)
    meta.columns = [f"meta_{c}" for c in meta.columns]
    return pa.Table.from_pandas(meta, preserve_index=False)


def _fixed_list(arr: np.ndarray) -> pa.Array:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


def _compute(ds, model_ref, info, path, device, batch_size, cache, progress, compile, log, workers=None) -> dict:
    import torch
    from tqdm.auto import tqdm

    t0 = time.time()
    ck = load_checkpoint(model_ref, device=device, cache=cache)
    t_loaded = time.time()
    layers = info.pop("layers", None)
    if compile and device == "cuda" and not layers:  # hooks for per-layer features need the eager module
        ck.compile()
    on_gpu = device == "cuda"
    batch_size = batch_size or (256 if on_gpu else 64)
    rows = ds.rows(info["split"])
    n_classes = len(ck.id2label or {})

    # Reader: uint8 batches from the source, pinned for async host->device copies.
    ready: queue.Queue = queue.Queue(maxsize=4)
    results: queue.Queue = queue.Queue(maxsize=4)
    errors: list = []

    workers = workers or (4 if on_gpu else 1)

    def load(chunk):  # each image resampled once, from its original size (core.preprocess)
        t = load_batch(ds, chunk, ck.preprocess)
        return chunk, (t.pin_memory() if on_gpu else t)

    def read():
        # Several loader threads (numpy gathers and image decoding release the GIL),
        # results kept in order, at most `depth` batches in flight.
        chunks = iter([rows[i : i + batch_size] for i in range(0, len(rows), batch_size)])
        depth = max(2, workers * 2)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="loader") as pool:
                pending = deque(pool.submit(load, c) for c in islice(chunks, depth))
                while pending and not errors:
                    ready.put(pending.popleft().result())
                    nxt = next(chunks, None)
                    if nxt is not None:
                        pending.append(pool.submit(load, nxt))
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)
        finally:
            ready.put(_DONE)

    first_meta = _meta_table(ds, rows[:1])
    prov = dict(
        kind="features", format=1, **info, rows=int(len(rows)), has_head=bool(n_classes),
        class_names=list(ds.class_names), id2label={str(k): v for k, v in (ck.id2label or {}).items()},
        size=ck.size_name, base_model=ck.provenance.get("base_model"), head=ck.provenance.get("head"),
        pretraining=ck.provenance.get("method"), dtype=str(ck.dtype).replace("torch.", ""), device=_device_name(device), batch_size=batch_size,
        image_size=list(ck.input_size()), dataset_image_size=ds.image_size,
        skipped=ds.skipped, versions=_versions(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if ds.skipped:
        log(f"skipped {len(ds.skipped)} unreadable file(s): " + ", ".join(
            f"{s['file']} ({s['reason']})" for s in ds.skipped[:5]) + (" ..." if len(ds.skipped) > 5 else ""))

    writer_state = {}
    layer_writer = layers and layerfeatures.LayerWriter(layerfeatures.layers_path(path), layerfeatures.provenance_for(
        info, path.stem, layers, ck.family))
    hidden = layerfeatures.HiddenStates(ck.backbone) if layers else None

    def write():
        try:
            w = None
            while (item := results.get()) is not _DONE:
                chunk, feats, logits, pooled = item
                if pooled:
                    layer_writer.write(ds, chunk, pooled)
                feats = feats.float().cpu().numpy()
                if w is None:  # the embedding width is known for sure only after one batch
                    s = _schema(feats.shape[1], n_classes, first_meta.schema)
                    prov["dim"] = int(feats.shape[1])
                    w = store.AtomicParquetWriter(path, s, prov).__enter__()
                    writer_state["w"] = w
                cols = {
                    "row": pa.array(chunk, pa.int64()), "id": pa.array(ds.ids[chunk].astype(str)),
                    "split": pa.array(ds.splits[chunk].astype(str)), "label": pa.array(ds.labels[chunk], pa.int64()),
                    "embedding": _fixed_list(feats),
                }
                if n_classes:
                    probs = torch.softmax(logits.float(), -1).cpu().numpy()
                    cols.update(pred=pa.array(probs.argmax(1), pa.int64()),
                                confidence=pa.array(probs.max(1), pa.float32()), probs=_fixed_list(probs))
                table = pa.table(cols)
                for name, col in zip(first_meta.column_names, _meta_table(ds, chunk).columns):
                    table = table.append_column(name, col)
                w.write(table)
        except BaseException as e:
            errors.append(e)
            while results.get() is not _DONE:  # drain so the producer never blocks
                pass

    reader = threading.Thread(target=read, daemon=True, name="reader")
    writer = threading.Thread(target=write, daemon=True, name="writer")
    reader.start()
    writer.start()
    bar = tqdm(total=len(rows), unit="img", desc=f"extract {ck.family}-{ck.size_name} on {device}",
               disable=not progress, file=sys.stderr, smoothing=0.1)
    try:
        with torch.inference_mode(), (hidden or contextlib.nullcontext()):
            while not errors and (item := ready.get()) is not _DONE:
                chunk, images = item
                x = images.to(device, non_blocking=True)
                short = batch_size - len(chunk) if compile else 0
                if short:  # a compiled graph is specialised to the batch shape: pad the last batch
                    x = torch.cat([x, x[:1].expand(short, *x.shape[1:])])
                feats, logits = ck.forward(x if x.is_floating_point() else ck.preprocess(x), info["pooling"])
                if short:
                    feats, logits = feats[: len(chunk)], None if logits is None else logits[: len(chunk)]
                pooled = hidden and layerfeatures.pool_layers(hidden.pop(), layers, ck.has_cls, ck.num_prefix_tokens)
                results.put((chunk, feats, logits, pooled))
                bar.update(len(chunk))
    except BaseException as e:  # includes KeyboardInterrupt: the temp file must go
        errors.append(e)
    finally:
        bar.close()
        results.put(_DONE)
        writer.join()
        while reader.is_alive():  # unblock a reader stuck on a full queue
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
    w = writer_state.get("w")
    if errors:
        if w:
            w.__exit__(type(errors[0]), errors[0], None)
        if layer_writer:
            layer_writer.close(ok=False, exc=errors[0])
        raise errors[0]
    prov["seconds"] = round(time.time() - t0, 3)
    prov["load_seconds"] = round(t_loaded - t0, 3)  # model load; the rest is the streaming pipeline
    prov["images_per_s"] = round(len(rows) / prov["seconds"], 1)
    if layer_writer:
        layer_writer.close()
        log(f"{len(layers)} {layerfeatures.unit_name(ck.family)}s -> {layer_writer.path}")
    w.__exit__(None, None, None)  # writes the provenance, renames into place
    log(f"{len(rows)} images -> {path} ({prov['seconds']:.1f} s, {len(rows) / prov['seconds']:.0f} img/s)")
    return store.provenance(path)


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({platform.processor() or platform.machine()})"


def _versions() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "pyarrow": pa.__version__, "core": __version__}


def add_parser(sub):
    p = sub.add_parser(
        "extract", help="compute features (and predictions) of a checkpoint over a dataset",
        description="Compute features of MODEL over DATASET and cache them as parquet. "
        "An identical request is a cache hit that loads no model.",
        epilog="examples:\n  python -m core extract --dataset folder:../shared/data/galaxyzoo-decals-examples "
        "--model demo:full\n  python -m core extract --dataset hf:matthieulel/galaxy10_decals "
        "--model hf:facebook/dinov2-base --split test",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, help="synthetic:galaxy10 | h5:PATH | hf:OWNER/NAME | hf:DIR | folder:DIR")
    p.add_argument("--model", required=True, help="hf:MODEL_ID | dir:PATH | demo:NAME")
    p.add_argument("--mode", choices=MODES, help="what the checkpoint is: generic (pretrained), head (head-only "
                   "finetune) or full (full finetune); default: what finetune recorded, else generic/full by head")
    p.add_argument("--split", default="all", choices=("all", "train", "test"))
    p.add_argument("--pooling", default="auto", choices=POOLINGS,
                   help="auto (default): what the family's classifier reads (DINOv2, ViT: CLS after the final "
                   "LayerNorm, the paper's; BEiT, SwinV2: pooler); cls: CLS token; mean: mean of patch tokens; "
                   "cls+mean: CLS and mean concatenated (what Dinov2ForImageClassification reads); "
                   "pooler: pooler_output")
    p.add_argument("--layers", metavar="all|LIST", help="also store each chosen block's pooled features (CLS "
                   "and mean of patch tokens; SwinV2: per stage) from the same pass, e.g. all, last, 1,4,9-12")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--batch-size", type=int, help="default 256 on GPU, 64 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU; pays off on large sets)")
    p.add_argument("--cache", help="cache folder (default: $EXPLORER_CACHE or ./cache)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError("--batch-size must be a positive integer")
    path, prov, hit = extract(args.dataset, args.model, mode=args.mode, split=args.split, pooling=args.pooling,
                              device=args.device, batch_size=args.batch_size, cache=args.cache,
                              compile=args.compile, layers=args.layers)
    if hit:
        print(f"cache hit: {path} ({prov['rows']} rows x {prov['dim']})")
        if args.layers:
            print(f"per-layer features: {layerfeatures.layers_path(path)}")
    return 0


__all__ = ["extract", "plan", "cached", "SourceError"]
