"""Batched feature extraction -> one features run per (dataset, checkpoint, pooling, split).

One implementation of extraction, two ways to schedule it. ``BatchExtractor`` does
one batch: load uint8 images -> preprocess on the device -> forward -> pool -> head
-> a parquet table (bf16 + SDPA on CUDA, fp32 on CPU). ``run_local`` schedules it in
this process, overlapping three stages: loader threads pull uint8 batches from the
Dataset (pinned when the GPU is used), this thread runs the model, and a writer
thread copies results back and appends parquet row groups; memory stays bounded by
the queue depths whatever the dataset size. ``core.extract.ray`` schedules the same
extractor on Ray Data actors (``--engine ray``). Both write through ``RunWriter``:
one atomic file, or atomic parts of a sharded run (``core.store.shards``) that resume.

Only torch, transformers, numpy, pandas and pyarrow are used here, so the GPU
path runs on a machine without datasets, h5py, Streamlit or umap; torch and
transformers are imported inside the functions that compute, so a cache hit
(``extract`` finding the run, ``lookup``) imports neither.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path


from core.store import cache as store
from core.extract import layers as layerfeatures
from core.store import shards
from core.store.compute import get_or_compute
from core.data.sources import normalize_ref, open_dataset
from core.errors import UserError
from core.models.load import POOLINGS, describe, fingerprint_dir, resolve
from core.extract.batches import BatchExtractor, Job, RunWriter, finish, log_skipped
from core.models.modes import resolve_mode, training_data


ENGINES = ("local", "ray")
_DONE = object()


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no GPU: use --device cpu or auto")
    return device


def plan(dataset, model_ref: str, pooling: str = "auto", split: str = "all", mode: str | None = None, cache=None,
         base_model: str | None = None):
    """Everything that identifies a features file, without loading the model.

    Returns (path, info, checkpoint folder) where info holds the fingerprints, resolved
    pooling and mode (`core.models.modes`), the base model and what the checkpoint was trained on;
    the folder is the reference resolved once (a hub reference asks the HF cache).
    """
    model_ref = normalize_ref(model_ref)
    ckpt_path = resolve(model_ref, cache)
    desc = describe(ckpt_path)
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    pooling = desc["default_pooling"] if pooling == "auto" else pooling
    mode = resolve_mode(mode, desc, dataset.class_names)
    if len(dataset.rows(split)) == 0:  # also validates the split name
        raise UserError(f"split {split!r} of {dataset.source} has no images")
    info = dict(
        dataset=dataset.source, dataset_fingerprint=dataset.fingerprint, model=model_ref,
        model_fingerprint=fingerprint_dir(ckpt_path), family=desc["family"], mode=mode,
        pooling=pooling, split=split, base_model=normalize_ref(base_model) if base_model else desc.get("base_model"),
        trained_on=training_data(model_ref, desc.get("recorded") or {}) if mode != "generic" else None,
    )
    said = (normalize_ref(base_model),) if base_model else ()  # keys without --base-model stay as they were
    key = store.key_of(info["dataset_fingerprint"], info["model_fingerprint"], pooling, split, mode, *said)
    return store.path_for(store.cache_dir(cache), "features", key), info, ckpt_path


def extract(dataset_ref, model_ref: str, mode: str | None = None, split: str = "all", pooling: str = "auto",
            device: str = "auto", batch_size: int | None = None, cache=None, progress: bool = True,
            compile: bool = False, workers: int | None = None, log=print, engine: str = "local",
            shard_rows: int | None = None, verify: bool = False, ray_options: dict | None = None,
            layers: str | None = None, base_model: str | None = None) -> tuple:
    """Compute (or find cached) features. Returns (run path, provenance, was_cached).

    ``dataset_ref`` is a reference string or an opened Dataset. A cache hit loads no
    model and reads only parquet footers (``verify=True`` reads every page checksum
    first); two identical requests at once compute once (file lock). Runs of more than
    ``shard_rows`` rows (default ``core.store.shards.SHARD_ROWS``), and every run of the Ray
    engine, are written sharded: a folder of parts that a killed run resumes.
    ``engine``: "local" (threads in this process) or "ray" (``ray_options``: address,
    workers, gpus_per_worker, cpus_per_worker; see core.extract.ray). ``layers``
    ("all", "last", "1,4,9-12"): also store those blocks' pooled features from the
    same pass (see ``core.extract.layers``; in-process engine only). ``base_model``: the
    reference an external finetuned checkpoint started from (finetune records it for its
    own), so ΔF1 pairs its head-only and full runs.
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    ds = open_dataset(dataset_ref) if isinstance(dataset_ref, str) else dataset_ref
    path, info, ckpt_path = plan(ds, model_ref, pooling, split, mode, cache, base_model)
    model_ref = info["model"]
    blocks = layerfeatures.requested(ckpt_path, layers, info["family"])
    if blocks and engine == "ray":
        raise UserError("--layers works with the in-process engine only: leave out --engine ray")

    def compute():
        want = blocks
        old = layerfeatures.cached(layerfeatures.layers_path(path), None)
        if want and old:  # keep the blocks stored before
            want = sorted(set(want) | set(old.get("layers", [])))
        if path.exists() and not cached(path, verify):
            log(f"cached features {path.name} are damaged: recomputing")
            path.unlink()
        return _compute(ds, model_ref, info, path, split, device, batch_size, cache, compile, workers, log, engine,
                        shard_rows, ray_options, want, progress)

    (out, prov), was_cached = get_or_compute(path, lambda _: _find(path, blocks, verify), compute)
    return out, prov, was_cached


def _compute(ds, model_ref, info, path, split, device, batch_size, cache, compile, workers, log, engine, shard_rows,
             ray_options, blocks, progress) -> tuple:
    """(run path, provenance) of a new features run: sharded when large or on Ray, else one file."""
    shard_rows = shard_rows or shards.SHARD_ROWS
    if shard_rows < 1:
        raise UserError("--shard-rows must be a positive integer")
    sharded = engine == "ray" or len(ds.rows(split)) > shard_rows
    out = path.with_suffix("") if sharded else path
    # the Ray engine picks the device from the cluster's resources, not this machine's
    device = device if engine == "ray" else _pick_device(device)
    job = Job(ds, model_ref, info, out, device, batch_size, cache, compile, sharded, shard_rows, blocks)
    if engine == "ray":
        from core.extract.ray import run_on_ray

        return out, run_on_ray(job, progress=progress, log=log, **(ray_options or {}))
    return out, run_local(job, progress=progress, log=log, workers=workers)


def lookup(dataset_ref, model_ref: str, mode: str | None = None, split: str = "all", pooling: str = "auto",
           cache=None, layers: str | None = None, base_model: str | None = None, verify: bool = False) -> tuple | None:
    """(run path, provenance) of the run ``extract`` with these arguments would find cached,
    else None. Never computes, never loads the model (nor imports torch)."""
    ds = open_dataset(dataset_ref) if isinstance(dataset_ref, str) else dataset_ref
    path, info, ckpt_path = plan(ds, model_ref, pooling, split, mode, cache, base_model)
    return _find(path, layerfeatures.requested(ckpt_path, layers, info["family"]), verify)


def _find(path, blocks, verify: bool) -> tuple | None:
    """The cached run at ``path`` (see ``find_cached``) when it also has per-layer features of ``blocks``."""
    found = find_cached(path, verify)
    return found if found and (not blocks or layerfeatures.cached(layerfeatures.layers_path(path), blocks)) else None


def cached(path, verify: bool = False) -> dict | None:
    """Provenance of a complete, intact features run (file or sharded folder); None means
    compute it. Checked from footers and row-group statistics; ``verify`` reads every page."""
    prov = store.quick_check(path)
    if prov is None or prov.get("kind") != "features":
        return None
    if verify and store.verify(path) is not None:
        return None
    return prov


def find_cached(path, verify: bool = False) -> tuple | None:
    """(run path, provenance) of the cached run planned at ``path``: the single file or
    the sharded folder beside it, whichever is complete; None if neither is."""
    for candidate in (Path(path), Path(path).with_suffix("")):
        if candidate.exists():
            prov = cached(candidate, verify)
            if prov:
                return candidate, prov
    return None


def run_local(job: Job, progress: bool = True, log=print, workers: int | None = None) -> dict:
    """The in-process scheduler: loader threads, the model on this thread, a writer thread.

    Memory stays bounded by the queue depths whatever the dataset size.
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    ex = BatchExtractor(job)
    t_loaded = time.time()
    prov = ex.provenance()
    writer = RunWriter(job, prov)
    rows = job.rows()
    chunks = [(part, rows[start:stop]) for part, start, stop in writer.todo()]
    layer_writer = job.layers and layerfeatures.LayerWriter(
        layerfeatures.layers_path(job.out.with_suffix(".parquet")),  # same key for a sharded run
        layerfeatures.provenance_for(job.info, job.out.stem, job.layers, ex.ck.family))
    on_gpu = job.device == "cuda"
    workers = workers or (4 if on_gpu else 1)
    ready: queue.Queue = queue.Queue(maxsize=4)
    results: queue.Queue = queue.Queue(maxsize=4)
    errors: list = []
    log_skipped(job.ds.skipped, log)

    threads = [threading.Thread(target=_load_in_order, args=(ex, chunks, workers, ready, errors), daemon=True,
                                name="reader"),
               threading.Thread(target=_write_results, args=(job, ex, writer, layer_writer, results, errors),
                                daemon=True, name="writer")]
    [t.start() for t in threads]
    n_todo = sum(len(rows) for _, rows in chunks)
    bar = tqdm(total=n_todo, unit="img", desc=f"extract {ex.ck.family}-{ex.ck.size_name} on {job.device}",
               disable=not progress, file=sys.stderr, smoothing=0.1)
    try:
        while not errors and (item := ready.get()) is not _DONE:
            part, rows, images, skipped = item
            feats, logits, pooled = ex.forward(images) if len(rows) else (None, None, None)
            results.put((part, rows, feats, logits, pooled, skipped))
            bar.update(len(rows) + len(skipped))
    except BaseException as e:  # includes KeyboardInterrupt: the temp file must go
        errors.append(e)
    finally:
        bar.close()
        results.put(_DONE)
        threads[1].join()
        while threads[0].is_alive():  # unblock a reader stuck on a full queue
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
    if errors:
        writer.abort(errors[0])
        if layer_writer:
            layer_writer.close(ok=False, exc=errors[0])
        raise errors[0]
    if layer_writer:
        layer_writer.close()
        log(f"{len(job.layers)} {layerfeatures.unit_name(ex.ck.family)}s -> {layer_writer.path}")
    return finish(writer, prov, t0, t_loaded, n_todo, log, engine="local")


def _load_in_order(ex: BatchExtractor, chunks: list, workers: int, ready: queue.Queue, errors: list) -> None:
    """The reader thread: several loader threads (numpy gathers and image decoding release the
    GIL) load the chunks, results are put on ``ready`` in order, at most ``2 x workers`` batches in
    flight; then ``_DONE``. An error is appended to ``errors`` (surfaced in the main thread)."""
    todo = iter(chunks)
    depth = max(2, workers * 2)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="loader") as pool:
            pending = deque((part, pool.submit(ex.load, rows)) for part, rows in islice(todo, depth))
            while pending and not errors:
                part, fut = pending.popleft()
                ready.put((part, *fut.result()))
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt[0], pool.submit(ex.load, nxt[1])))
    except BaseException as e:  # surfaced in the main thread
        errors.append(e)
    finally:
        ready.put(_DONE)


def _write_results(job: Job, ex: BatchExtractor, writer: RunWriter, layer_writer, results: queue.Queue,
                   errors: list) -> None:
    """The writer thread: features (and per-block features) of each batch into the run, until ``_DONE``."""
    try:
        while (item := results.get()) is not _DONE:
            part, rows, feats, logits, pooled, skipped = item
            if pooled:
                layer_writer.write(job.ds, rows, pooled)
            writer.add(part, None if feats is None else ex.table(rows, feats, logits), skipped)
    except BaseException as e:
        errors.append(e)
        while results.get() is not _DONE:  # drain so the producer never blocks
            pass
