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
import warnings

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


def _reachable(address: str, timeout: float = 5.0) -> None:
    """A UserError within ``timeout`` seconds when nothing listens at ``address`` (``host:port`` or
    ``ray://host:port``); Ray itself would retry its connection for many minutes."""
    import socket

    if address == "auto" or address.startswith(("local", "anyscale://")):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.1:6379) or ray://HOST:10001")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"no Ray cluster answers at {address} ({e.strerror or type(e).__name__}): start one with "
                        "`ray start --head` there, or check the address and port") from None


def connect(address: str | None = None, num_cpus: int | None = None, object_store_mb: int | None = None):
    """Join the cluster at ``address``, or start a local one (no dashboard). Returns the
    ray module. Reuses a connection this process already has (tests share one cluster).
    An address where nothing listens fails within seconds, with one line."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    if address:
        _reachable(address)
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
    except Exception as e:  # ConnectionError, RuntimeError, ValueError, ray's AuthenticationError...
        if "Authentication" in type(e).__name__ or "auth" in str(e).lower()[:200]:
            raise UserError(f"the Ray cluster at {address} uses token authentication and this process has no "
                            "token: export RAY_AUTH_MODE=token with the cluster's ~/.ray/auth_token "
                            "(docs/SCALE.md)") from None
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"could not start or join {where} ({str(e).splitlines()[0][:160]}): check --address, "
                        "or start one with `ray start --head`") from None
    _quiet_cluster_messages(ray)
    return ray


def _quiet_cluster_messages(ray) -> None:
    """A lost node makes Ray print its last raylet log lines (~40 lines) on the driver's stdout;
    keep the first line of each such message, on stderr. Ray Data's own execution log (with the
    traceback of a failed pass that run_on_ray retries) is kept to its log file."""
    import ray._private.worker as rw

    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    original = getattr(rw.print_to_stdstream, "__wrapped__", rw.print_to_stdstream)

    def first_lines_only(data, ignore_prefix):
        if data.get("pid") == "raylet":
            for line in data.get("lines") or []:
                first = (str(line).strip().splitlines() or [""])[0]
                print(f"ray: {first.split('. Possible reasons')[0][:200]}", file=sys.stderr)
            return
        original(data, ignore_prefix)

    first_lines_only.__wrapped__ = original
    rw.print_to_stdstream = first_lines_only


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


def _alive_nodes(ray) -> list[dict]:
    """The resources of each node that is alive now."""
    return [n.get("Resources") or {} for n in ray.nodes() if n.get("Alive")]


def _resources(ray, device: str, workers, gpus_per_worker, cpus_per_worker) -> tuple[str, int, dict]:
    """(device the actors use, number of actors, Ray resources per actor), sized to fit the nodes
    that are alive: by default one actor per GPU, or on a CPU-only cluster one actor per node,
    each asking for no more CPUs than the smallest such node has (an actor never asks for more
    than one node holds, which would wait forever)."""
    nodes = _alive_nodes(ray)
    gpus = int(sum(n.get("GPU", 0) for n in nodes))
    node_cpus = [int(n.get("CPU", 0)) for n in nodes if n.get("CPU", 0) >= 1]
    if not node_cpus and not gpus:
        raise UserError("the Ray cluster has no node with a CPU or GPU left to run on")
    if device == "cuda" and not gpus:
        raise UserError("--device cuda asked for, but the Ray cluster has no GPU: use --device cpu or auto")
    use_gpu = device != "cpu" and (gpus > 0 or bool(gpus_per_worker))
    biggest = max(node_cpus or [1])
    if use_gpu:
        per = gpus_per_worker or 1.0
        n = workers or max(1, int(gpus // per))
        cpus = sum(node_cpus) or 1
        return "cuda", n, {"num_gpus": per, "num_cpus": cpus_per_worker or max(1, min(biggest, cpus // max(n, 1) // 2))}
    if workers:
        per = cpus_per_worker or max(1, min(biggest, sum(node_cpus) // workers))
        return "cpu", workers, {"num_cpus": per}
    if cpus_per_worker:
        return "cpu", max(1, sum(c // cpus_per_worker for c in node_cpus) or 1), {"num_cpus": cpus_per_worker}
    return "cpu", len(node_cpus), {"num_cpus": min(node_cpus)}


_LOST = ("ActorDiedError", "ActorUnavailableError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
         "WorkerCrashedError", "ObjectReconstructionFailedError", "ObjectFetchTimedOutError",
         "RaySystemError", "LocalRayletDiedError", "ActorUnschedulableError")


def _lost_resources(e: BaseException) -> bool:
    """Whether an error means part of the cluster went away (a node, an actor, an object), as
    opposed to an error in the work itself: then the run is retried on what is left."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        names = {t.__name__ for t in type(e).__mro__}
        if names & set(_LOST) or any(n in str(e)[:2000] for n in _LOST):
            return True
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return False


def _settle(ray, alive_before: int, log, wait_s: float = 45.0) -> None:
    """After a loss: wait until Ray marks the lost node dead (so no new actor is placed there),
    or ``wait_s`` seconds when no node is lost (a worker process died, not a node)."""
    t = time.time()
    while time.time() - t < wait_s:
        if len(_alive_nodes(ray)) < alive_before:
            return
        time.sleep(1.0)


def run_on_ray(job: Job, progress: bool = True, log=print, address: str | None = None, workers: int | None = None,
               gpus_per_worker: float | None = None, cpus_per_worker: float | None = None,
               num_cpus: int | None = None, object_store_mb: int | None = None, shutdown: bool = True) -> dict:
    """Extract ``job`` on a Ray cluster into its sharded run; returns the run's provenance.

    ``address``: a cluster to join, else a local one is started (``num_cpus``,
    ``object_store_mb``) and, with ``shutdown``, stopped at the end. ``workers``: model
    actors (default one per GPU, else 1); ``gpus_per_worker`` / ``cpus_per_worker``: what
    each actor reserves."""
    t0 = time.time()
    ray = _import_ray()
    started_here = not ray.is_initialized()
    ray = connect(address, num_cpus, object_store_mb)
    attempts, wanted = 0, job.device
    try:
        while True:
            alive = len(_alive_nodes(ray))
            try:
                return _run_once(ray, job, wanted, progress, log, address, workers, gpus_per_worker,
                                 cpus_per_worker, t0)
            except UserError:
                raise
            except Exception as e:
                attempts += 1
                if not _lost_resources(e) or attempts > MAX_ATTEMPTS:
                    if _lost_resources(e) or type(e).__module__.startswith("ray"):
                        first = (str(e).strip().splitlines() or [""])[0][:160]
                        raise UserError(f"the Ray run cannot go on ({type(e).__name__} after {attempts} "
                                        f"attempt(s): {first}); finished parts are kept: run the same command "
                                        "again once the cluster has nodes to resume it") from None
                    raise
                log(f"a Ray node or worker was lost ({type(e).__name__}): finished parts are kept, "
                    f"carrying on with the nodes that are left (retry {attempts} of {MAX_ATTEMPTS})")
                _settle(ray, alive, log)
    finally:
        if started_here and not address and shutdown:
            ray.shutdown()


MAX_ATTEMPTS = 4  # whole-pipeline retries after a lost node (Ray Data restarts actors and retries tasks first)


def _run_once(ray, job: Job, wanted: str, progress, log, address, workers, gpus_per_worker, cpus_per_worker,
              t0: float) -> dict:
    """One pass of the pipeline over the parts still to do."""
    from tqdm.auto import tqdm
    import ray.data as rd

    device, n_actors, resources = _resources(ray, wanted, workers, gpus_per_worker, cpus_per_worker)
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
            with warnings.catch_warnings():  # max_restarts travels as a Ray remote arg (deprecated form)
                warnings.simplefilter("ignore")
                out = data.map_batches(
                    _RayExtractor, fn_constructor_args=(job, threads), batch_size=1, batch_format="numpy",
                    compute=rd.ActorPoolStrategy(size=n_actors, max_concurrent_calls_per_actor=loaders,
                                                 max_tasks_in_flight_per_actor=2 * loaders),
                    # a lost actor fails this pass at once (a restarted one could wait forever for the
                    # CPUs of a dead node); run_on_ray then runs the parts not yet written again, with
                    # actors sized to the nodes that are left
                    max_restarts=0, **resources)
            for table in out.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                done = _write_batch(writer, prov, table)
                bar.update(done)
    except BaseException as e:
        writer.abort(e)
        raise
    finally:
        bar.close()
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
