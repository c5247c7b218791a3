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

import platform
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa

from core import __version__
from core.store import cache as store
from core.extract import layers as layerfeatures
from core.store import shards
from core.data.sources import normalize_ref, open_dataset
from core.data.base import SourceError
from core.errors import UserError
from core.models.load import POOLINGS, describe, fingerprint_dir, load_checkpoint, resolve
from core.models.modes import MODES, resolve_mode, training_data

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

    if found := _find(path, blocks, verify):
        return (*found, True)
    with store.compute_lock(path):
        if found := _find(path, blocks, verify):  # someone else may have finished while we waited
            return (*found, True)
        old = layerfeatures.cached(layerfeatures.layers_path(path), None)
        if blocks and old:  # keep the blocks stored before
            blocks = sorted(set(blocks) | set(old.get("layers", [])))
        if path.exists() and not cached(path, verify):
            log(f"cached features {path.name} are damaged: recomputing")
            path.unlink()
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

            prov = run_on_ray(job, progress=progress, log=log, **(ray_options or {}))
        else:
            prov = run_local(job, progress=progress, log=log, workers=workers)
    return out, prov, False


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


@dataclass
class Job:
    """One extraction request, resolved: what both schedulers need to know."""

    ds: object  # the opened Dataset
    model_ref: str
    info: dict  # plan()'s identity fields
    out: Path  # <key>.parquet, or the <key>/ folder of a sharded run
    device: str
    batch_size: int | None
    cache: object
    compile: bool
    sharded: bool
    shard_rows: int
    layers: list | None = None  # blocks whose pooled features go to layers/<key>.parquet too

    def rows(self) -> np.ndarray:
        return self.ds.rows(self.info["split"])

    def chunks(self, skip_parts=()) -> list[tuple[int, int, int]]:
        """(part index, start, stop) per batch: slices of ``rows()``, in row order,
        leaving out finished parts."""
        n, size = len(self.rows()), self.batch_size
        ranges = shards.part_ranges(n, self.shard_rows) if self.sharded else [(0, n)]
        return [(k, i, min(i + size, stop)) for k, (start, stop) in enumerate(ranges)
                if k not in skip_parts for i in range(start, stop, size)]


class BatchExtractor:
    """The one implementation of extraction, per batch: load -> preprocess -> forward ->
    pool -> head -> parquet table. The in-process scheduler and every Ray actor call it.

    >>> ex = BatchExtractor(job)
    >>> table, skipped = ex(rows)       # or ex.load / ex.forward / ex.table, overlapped
    """

    def __init__(self, job: Job):
        import torch

        self.job, self.ds, self.pooling = job, job.ds, job.info["pooling"]
        self.device = job.device
        self.ck = load_checkpoint(job.model_ref, device=self.device, cache=job.cache)
        if job.compile and self.device == "cuda" and not job.layers:  # layer hooks need the eager module
            self.ck.compile()
        self.hidden = layerfeatures.HiddenStates(self.ck.backbone).__enter__() if job.layers else None
        self.batch_size = job.batch_size or (256 if self.device == "cuda" else 64)
        job.batch_size = self.batch_size
        self.n_classes = len(self.ck.id2label or {})
        self.meta_schema = _meta_table(self.ds, job.rows()[:1]).schema
        self._torch = torch

    def load(self, rows) -> tuple[np.ndarray, object, list]:
        """(rows that decoded, their images for the device, skipped files). Images are a
        uint8 (b, H, W, 3) batch of originals, or float pixel values (b, 3, S, S) when
        their sizes differ (``core.models.preprocess``); pinned on GPU runs."""
        from core.models.preprocess import originals_are_batches, stack_originals

        torch = self._torch
        if originals_are_batches(self.ds):
            t, skipped = torch.from_numpy(self.ds.batch(rows)), []
        else:  # decoded one by one: a file that does not decode is skipped and named
            rows, images, skipped = self.ds.load_images(rows)
            t = stack_originals(images, self.ck.preprocess) if images else torch.zeros((0, 1, 1, 3), dtype=torch.uint8)
        return rows, (t.pin_memory() if self.device == "cuda" and len(rows) else t), skipped

    def forward(self, images) -> tuple:
        """What ``load`` gave -> (features (b, d), logits (b, C) or None, per-layer pooled
        features or None) on the device."""
        torch = self._torch
        n = len(images)
        with torch.inference_mode():
            x = images.to(self.device, non_blocking=True)
            short = self.batch_size - n if self.job.compile and self.device == "cuda" else 0
            if short > 0:  # a compiled graph is specialised to the batch shape: pad the last batch
                x = torch.cat([x, x[:1].expand(short, *x.shape[1:])])
            feats, logits = self.ck.forward(x if x.is_floating_point() else self.ck.preprocess(x), self.pooling)
            if short > 0:
                feats, logits = feats[:n], None if logits is None else logits[:n]
            pooled = self.hidden and layerfeatures.pool_layers(self.hidden.pop(), self.job.layers, self.ck.has_cls,
                                                               self.ck.num_prefix_tokens)
        return feats, logits, pooled

    def schema(self, dim: int) -> pa.Schema:
        return _schema(dim, self.n_classes, self.meta_schema)

    def table(self, rows, feats, logits) -> pa.Table:
        """Device outputs -> the features table of these rows (columns of CONTRACTS.md)."""
        ds = self.ds
        feats = feats.float().cpu().numpy()
        cols = {
            "row": pa.array(rows, pa.int64()), "id": pa.array(ds.ids[rows].astype(str)),
            "split": pa.array(ds.splits[rows].astype(str)), "label": pa.array(ds.labels[rows], pa.int64()),
            "embedding": _fixed_list(feats),
        }
        if self.n_classes:
            probs = self._torch.softmax(logits.float(), -1).cpu().numpy()
            cols.update(pred=pa.array(probs.argmax(1), pa.int64()),
                        confidence=pa.array(probs.max(1), pa.float32()), probs=_fixed_list(probs))
        table = pa.table(cols)
        for name, col in zip(self.meta_schema.names, _meta_table(ds, rows).columns):
            table = table.append_column(name, col)
        return table.cast(self.schema(feats.shape[1]))

    def __call__(self, rows) -> tuple[pa.Table | None, list]:
        """One batch end to end: (table of the rows that decoded, or None; skipped files)."""
        rows, images, skipped = self.load(rows)
        if not len(rows):
            return None, skipped
        feats, logits, _ = self.forward(images)
        return self.table(rows, feats, logits), skipped

    def provenance(self) -> dict:
        ck, ds, job = self.ck, self.ds, self.job
        return dict(
            kind="features", format=1, **job.info, rows=int(len(job.rows())), has_head=bool(self.n_classes),
            class_names=list(ds.class_names), id2label={str(k): v for k, v in (ck.id2label or {}).items()},
            size=ck.size_name, head=ck.provenance.get("head"), pretraining=ck.provenance.get("method"),
            dtype=str(ck.dtype).replace("torch.", ""), device=_device_name(self.device),
            batch_size=self.batch_size, image_size=list(ck.input_size()), dataset_image_size=ds.image_size,
            skipped=list(ds.skipped), versions=_versions(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )


class RunWriter:
    """Where a run's tables go: one atomic parquet file, or one atomic part per shard.

    ``todo()`` names the parts still to compute (all of them, unless a killed sharded
    run left some); ``add(part, table, skipped)`` is called in row order.
    """

    def __init__(self, job: Job, prov: dict):
        self.job, self.prov = job, prov
        self.shards = shards.ShardedWriter(job.out, prov, len(job.rows()), job.shard_rows) if job.sharded else None
        self.finished = self.shards.done() if self.shards else set()
        self.schema = None
        self._part, self._writer = None, None
        self.skipped: list = []  # skipped before the first table (no writer yet)
        self.new_skipped: list = []  # every file this run found unreadable

    def todo(self) -> list[tuple[int, int, int]]:
        return self.job.chunks(skip_parts=self.finished)

    def add(self, part: int, table: pa.Table | None, skipped: list):
        self.new_skipped += skipped
        if table is not None and self.schema is None:
            self.schema = table.schema
            self.prov["dim"] = int(table.schema.field("embedding").type.list_size)
        if part != self._part:
            self._close_part()
            self._part = part
        if self._writer is None and self.schema is not None:
            self._writer = (self.shards.part_writer(part, self.schema) if self.shards
                            else store.AtomicParquetWriter(self.job.out, self.schema, self.prov)).__enter__()
        if self._writer is None:  # nothing decoded yet: remember what was skipped
            self.skipped += skipped
            return
        if self.shards:
            self._writer.provenance["part_skipped"] += self.skipped + skipped
        else:
            self.prov["skipped"] += self.skipped + skipped
        self.skipped = []
        if table is not None:
            self._writer.write(table)

    def _close_part(self, exc=None):
        if self._writer is not None:
            self._writer.__exit__(type(exc) if exc else None, exc, None)
            self._writer = None

    def abort(self, exc: BaseException):
        """Leave nothing that looks whole: the open file or part is discarded."""
        self._close_part(exc)

    def close(self) -> dict:
        """Finish the run (rename the file / write the manifest); returns its provenance."""
        if not self.shards:
            if self._writer is None:
                raise UserError(f"no image of {self.job.ds.source} could be read: nothing to extract")
            self._close_part()
            return store.provenance(self.job.out)
        self._close_part()
        self.prov["skipped"] += self.skipped
        if "dim" not in self.prov:  # every part was done by the killed run
            self.prov["dim"] = store.provenance(self.job.out / shards.part_name(0)).get("dim")
        return self.shards.finish(self.prov)


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
    _log_skipped(job.ds.skipped, log)

    def read():
        # Several loader threads (numpy gathers and image decoding release the GIL),
        # results kept in order, at most `depth` batches in flight.
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

    def write():
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

    threads = [threading.Thread(target=read, daemon=True, name="reader"),
               threading.Thread(target=write, daemon=True, name="writer")]
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
    return _finish(writer, prov, t0, t_loaded, n_todo, log, engine="local")


def _finish(writer: RunWriter, prov: dict, t0: float, t_loaded: float, n_done: int, log, engine: str) -> dict:
    """Record timings in the provenance, then complete the run (rename / manifest)."""
    prov["engine"] = engine
    prov["seconds"] = round(time.time() - t0, 3)
    prov["load_seconds"] = round(t_loaded - t0, 3)  # model load; the rest is the streaming pipeline
    prov["images_per_s"] = round(n_done / max(prov["seconds"], 1e-9), 1)
    if writer.finished:
        prov["resumed_parts"] = len(writer.finished)
    _log_skipped(writer.new_skipped, log)
    out = writer.close()
    resumed = f", {len(writer.finished)} part(s) already done" if writer.finished else ""
    log(f"{n_done} images -> {writer.job.out} ({prov['seconds']:.1f} s, "
        f"{n_done / max(prov['seconds'], 1e-9):.0f} img/s{resumed})")
    return out


def _log_skipped(skipped: list, log) -> None:
    if skipped:
        log(f"skipped {len(skipped)} unreadable file(s): " + ", ".join(
            f"{s['file']} ({s['reason']})" for s in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))


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
    p.add_argument("--base-model", metavar="REF", help="the checkpoint this one was finetuned from (for an external "
                   "finetune, e.g. hf:facebook/dinov2-base): ΔF1 pairs its head-only and full runs by it")
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
    p.add_argument("--verify", action="store_true",
                   help="check every page checksum of a cached run before trusting it (recompute if damaged)")
    p.add_argument("--shard-rows", type=int, help=f"rows per part of a sharded run (default {shards.SHARD_ROWS:,}); "
                   "runs with more rows are written as a folder of parts that a killed run resumes")
    g = p.add_argument_group("scale out (docs/SCALE.md)")
    g.add_argument("--engine", default="local", choices=ENGINES,
                   help="local: threads in this process; ray: Ray Data actors on a local or existing cluster")
    g.add_argument("--address", help="Ray cluster to join (e.g. ray://head:10001 or auto); default: start a local one")
    g.add_argument("--workers", type=int, help="Ray: model actors (default: one per GPU, else 1)")
    g.add_argument("--gpus-per-worker", type=float, help="Ray: GPUs per actor (default 1 when the cluster has GPUs)")
    g.add_argument("--cpus-per-worker", type=float, help="Ray: CPUs per actor (default: all on CPU-only clusters)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    for flag in ("batch_size", "shard_rows", "workers"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer")
    ray_options = {k: getattr(args, k) for k in ("address", "workers", "gpus_per_worker", "cpus_per_worker")}
    if args.engine != "ray" and any(v is not None for v in ray_options.values()):
        raise UserError("--address, --workers, --gpus-per-worker and --cpus-per-worker need --engine ray")
    path, prov, hit = extract(args.dataset, args.model, mode=args.mode, split=args.split, pooling=args.pooling,
                              device=args.device, batch_size=args.batch_size, cache=args.cache,
                              compile=args.compile, engine=args.engine, shard_rows=args.shard_rows,
                              verify=args.verify, ray_options=ray_options if args.engine == "ray" else None,
                              layers=args.layers, base_model=args.base_model)
    if hit:
        print(f"cache hit: {path} ({prov['rows']} rows x {prov['dim']})")
        if args.layers:
            print(f"per-layer features: {layerfeatures.layers_path(path)}")
    return 0


__all__ = ["extract", "lookup", "plan", "cached", "SourceError"]
