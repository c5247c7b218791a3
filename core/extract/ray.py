"""`extract --engine ray`: the same per-batch extractor, scheduled by Ray Data.

Ray's documented pattern for batch inference: a dataset of work items, then
``map_batches`` with a callable class on an actor pool (``ActorPoolStrategy``,
``num_gpus`` per actor). Here a work item is one batch of row positions; each actor
opens the checkpoint once and runs ``core.extract.features.BatchExtractor`` on its batches,
so both engines share one implementation of load -> preprocess -> forward -> pool ->
head. The driver streams the actors' tables back in row order and writes them
through the same ``RunWriter`` as the in-process engine: a sharded run whose parts
are atomic, so a killed run resumes and computes only the missing parts. Only
embeddings travel back to the driver (about 3 KB per galaxy at 768-d), never images.

Ray is imported only here, and this module only when ``--engine ray`` asks for it.
Workers on other machines need this repository importable (same path, or
``PYTHONPATH``) and must reach the dataset and checkpoint paths (a shared file
system or hub ids): see docs/SCALE.md.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.errors import UserError
from core.store import files
from core.extract.batches import BatchExtractor, Job, RunWriter, finish, log_skipped

REPO_ROOT = str(files.REPO_ROOT)
PART, BATCH = "_part", "_batch"  # the actor's bookkeeping columns, dropped by the driver


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError("--engine ray needs Ray Data: pip install 'ray[data]==2.60.0'") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None, object_store_mb: int | None = None):
    """Join the cluster at ``address``, or start a local one (no dashboard). Returns the
    ray module. Reuses a connection this process already has (tests share one cluster)."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    logging.getLogger("ray").setLevel(logging.ERROR)
    if not address:  # Ray nices its workers (15) by default: on a busy machine they would starve
        os.environ.setdefault("RAY_worker_niceness", "0")
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)}}
    kw = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", runtime_env=env,
              ignore_reinit_error=True)
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus, object_store_memory=(object_store_mb << 20) if object_store_mb else None,
                     **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"could not start or join {where} ({str(e).splitlines()[0][:160]}): check --address, "
                        "or start one with `ray start --head`") from None
    return ray


class _RayExtractor:
    """One Ray actor: a BatchExtractor that loads batches on several threads while one
    thread at a time runs the model (the in-process overlap, inside the actor)."""

    def __init__(self, job: Job, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.ex = BatchExtractor(job)
        self.rows = job.rows()
        self.prov = json.dumps(self.ex.provenance(), default=str)
        self.model_lock = threading.Lock()
        self.dim = None

    def __call__(self, item: dict) -> pa.Table:
        part, start, stop = (int(item[k][0]) for k in ("part", "start", "stop"))
        rows, images, skipped = self.ex.load(self.rows[start:stop])
        if len(rows):
            with self.model_lock:
                feats, logits, _ = self.ex.forward(images)
            table = self.ex.table(rows, feats, logits)
            self.dim = table.schema.field("embedding").type.list_size
        else:  # nothing decoded: one marker row (row = -1) carries the names of the skipped files
            table = self._marker()
        info = [None] * table.num_rows
        info[0] = json.dumps({"prov": self.prov, "skipped": skipped})
        table = table.append_column(PART, pa.array(np.full(table.num_rows, part), pa.int64()))
        return table.append_column(BATCH, pa.array(info, pa.string()))

    def _marker(self) -> pa.Table:
        if self.dim is None:  # the width is known only from a forward pass: run one black image
            import torch

            size = self.ex.ds.image_size
            self.dim = int(self.ex.forward(torch.zeros((1, size, size, 3), dtype=torch.uint8))[0].shape[1])
        schema = self.ex.schema(self.dim)
        cols = [pa.array([-1], pa.int64()) if f.name == "row" else pa.nulls(1, f.type) for f in schema]
        return pa.Table.from_arrays(cols, schema=schema)


def _resources(ray, device: str, workers, gpus_per_worker, cpus_per_worker) -> tuple[str, int, dict]:
    """(device the actors use, number of actors, Ray resources per actor)."""
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 1))
    if device == "cuda" and not gpus:
        raise UserError("--device cuda asked for, but the Ray cluster has no GPU: use --device cpu or auto")
    use_gpu = device != "cpu" and (gpus > 0 or bool(gpus_per_worker))
    if use_gpu:
        per = gpus_per_worker or 1.0
        n = workers or max(1, int(gpus // per))
        return "cuda", n, {"num_gpus": per, "num_cpus": cpus_per_worker or max(1, cpus // max(n, 1) // 2)}
    n = workers or 1
    return "cpu", n, {"num_cpus": cpus_per_worker or max(1, cpus // n)}


def run_on_ray(job: Job, progress: bool = True, log=print, address: str | None = None, workers: int | None = None,
               gpus_per_worker: float | None = None, cpus_per_worker: float | None = None,
               num_cpus: int | None = None, object_store_mb: int | None = None, shutdown: bool = True) -> dict:
    """Extract ``job`` on a Ray cluster into its sharded run; returns the run's provenance.

    ``address``: a cluster to join, else a local one is started (``num_cpus``,
    ``object_store_mb``) and, with ``shutdown``, stopped at the end. ``workers``: model
    actors (default one per GPU, else 1); ``gpus_per_worker`` / ``cpus_per_worker``: what
    each actor reserves."""
    from tqdm.auto import tqdm

    t0 = time.time()
    ray = _import_ray()
    started_here = not ray.is_initialized()
    ray = connect(address, num_cpus, object_store_mb)
    import ray.data as rd

    device, n_actors, resources = _resources(ray, job.device, workers, gpus_per_worker, cpus_per_worker)
    job.device = device
    job.batch_size = job.batch_size or (256 if device == "cuda" else 64)
    prov = _driver_provenance(job)
    writer = RunWriter(job, prov)
    items = [{"part": part, "start": start, "stop": stop} for part, start, stop in writer.todo()]
    n_todo = sum(item["stop"] - item["start"] for item in items)
    log_skipped(job.ds.skipped, log)
    ctx = rd.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # parts are written in row order
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    loaders = 4 if device == "cuda" else 2
    threads = int(resources["num_cpus"]) if device == "cpu" else 1
    bar = tqdm(total=n_todo, unit="img", desc=f"extract on ray ({n_actors} x {device})", disable=not progress,
               file=sys.stderr, smoothing=0.1)
    t_started = time.time()
    try:
        if items:
            data = rd.from_items(items, override_num_blocks=min(len(items), 4 * n_actors * loaders))
            out = data.map_batches(
                _RayExtractor, fn_constructor_args=(job, threads), batch_size=1, batch_format="numpy",
                compute=rd.ActorPoolStrategy(size=n_actors, max_concurrent_calls_per_actor=loaders,
                                             max_tasks_in_flight_per_actor=2 * loaders),
                max_restarts=0,  # a lost worker fails the run; running it again resumes it
                **resources)
            for table in out.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                done = _write_batch(writer, prov, table)
                bar.update(done)
    except BaseException as e:
        writer.abort(e)
        raise
    finally:
        bar.close()
        if started_here and not address and shutdown:
            ray.shutdown()
    prov["ray"] = {"actors": n_actors, "device": device, "resources": resources, "address": address or "local",
                   "startup_seconds": round(t_started - t0, 3)}
    return finish(writer, prov, t0, t_started, n_todo, log, engine="ray")


def _driver_provenance(job: Job) -> dict:
    """What the driver knows before any actor answers; the actors' own fields (device,
    dtype, image size...) are merged in from the first batch."""
    return dict(kind="features", format=1, **job.info, rows=int(len(job.rows())), skipped=list(job.ds.skipped))


def _write_batch(writer: RunWriter, prov: dict, table: pa.Table) -> int:
    """Route one actor output to its part(s); returns the galaxies it accounts for."""
    info = [json.loads(s) for s in table.column(BATCH).drop_null().to_pylist()]
    if info and "device" not in prov:
        actor = json.loads(info[0]["prov"])
        for k, v in actor.items():
            if k not in ("rows", "skipped"):
                prov.setdefault(k, v)
    parts = table.column(PART).to_numpy()
    skipped: dict[int, list] = {}
    for i, s in enumerate(table.column(BATCH).to_pylist()):
        if s is not None:
            skipped.setdefault(int(parts[i]), []).extend(json.loads(s)["skipped"])
    data = table.drop_columns([PART, BATCH])
    done = 0
    for part in dict.fromkeys(parts.tolist()):  # a block may straddle two parts; parts arrive in order
        piece = data.filter(pc.and_(pc.equal(table.column(PART), part), pc.greater_equal(table.column("row"), 0)))
        writer.add(int(part), piece if piece.num_rows else None, skipped.get(part, []))
        done += piece.num_rows + len(skipped.get(part, []))
    return done
