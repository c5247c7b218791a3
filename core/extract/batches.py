"""The per-batch work both schedulers share: a ``Job`` (what to extract, where to write), the
``BatchExtractor`` (uint8 images -> features, logits, probabilities, one batch at a time) and the
``RunWriter`` (one atomic file, or the atomic parts of a sharded run). ``core.extract.features`` runs
them on threads in this process, ``core.extract.ray`` on Ray Data actors."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from core import __version__
from core.store import cache as store
from core.extract import layers as layerfeatures
from core.store import shards
from core.store.embeddings import embedding_column
from core.errors import UserError
from core.models.load import load_checkpoint

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
            "embedding": embedding_column(feats),
        }
        if self.n_classes:
            probs = self._torch.softmax(logits.float(), -1).cpu().numpy()
            cols.update(pred=pa.array(probs.argmax(1), pa.int64()),
                        confidence=pa.array(probs.max(1), pa.float32()), probs=embedding_column(probs))
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


def finish(writer: RunWriter, prov: dict, t0: float, t_loaded: float, n_done: int, log, engine: str) -> dict:
    """Record timings in the provenance, then complete the run (rename / manifest)."""
    prov["engine"] = engine
    prov["seconds"] = round(time.time() - t0, 3)
    prov["load_seconds"] = round(t_loaded - t0, 3)  # model load; the rest is the streaming pipeline
    prov["images_per_s"] = round(n_done / max(prov["seconds"], 1e-9), 1)
    if writer.finished:
        prov["resumed_parts"] = len(writer.finished)
    log_skipped(writer.new_skipped, log)
    out = writer.close()
    resumed = f", {len(writer.finished)} part(s) already done" if writer.finished else ""
    log(f"{n_done} images -> {writer.job.out} ({prov['seconds']:.1f} s, "
        f"{n_done / max(prov['seconds'], 1e-9):.0f} img/s{resumed})")
    return out


def log_skipped(skipped: list, log) -> None:
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


