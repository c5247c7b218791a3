"""Finetuning: head-only (frozen backbone) or full, with a linear or MLP head.

Defaults follow the paper's model cards: Adam (AdamW, weight decay 0), linear
schedule with 10% warm-up, seed 42, 30 epochs, lr 5e-5 for full finetuning
(1e-4 for ViT) and 1e-3 for head-only, gradient clipping at 1.0 as in the HF
Trainer. Precision (``--precision auto``): bf16 autocast on CUDA and on CPUs
with native bf16 (AVX512-BF16 or AMX, where it is 2-3x faster than fp32; on
those the attention runs eager during training, as PyTorch's CPU SDPA kernel is
slower than eager in bf16), fp32 on other CPUs. Galaxies have no preferred
orientation, so augmentation draws one of the 8 flips/90° rotations per image.

Head-only freezes the backbone, so its outputs are computed once (for up to 8
orientations when augmenting) and the head trains on those cached features.

What is saved (always through a staging folder renamed into place, so a
killed run never leaves a checkpoint that loads):
- ``--head linear`` on a model whose HF class has a ``classifier`` (DINOv2,
  ViT, BEiT, SwinV2): a standard ``*ForImageClassification`` checkpoint that
  plain transformers loads; its classifier sees what the HF class feeds it
  (`core.models.pooling`: for DINOv2 concat(CLS, mean patch tokens), 2 x hidden;
  for BEiT its pooler).
- MLP heads: the base model + ``explorer_head.safetensors`` on the same
  pooled features as the family's classifier, see `core.models.heads`.
- ``explorer.json``: provenance; ``training_log.json``: one entry per epoch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.store import cache as store
from core.errors import UserError
from core.models.heads import HEADS, build_head, head_spec
from core.models.pooling import classifier_pooling

MODES = ("head", "full")
SCHEDULES = ("linear", "onecycle")
PRECISIONS = ("auto", "bf16", "fp32")
PRELOAD_BYTES = 4 << 30  # below this, read the uint8 images once and keep them in memory


# ---------------------------------------------------------------- pieces


def dihedral(images: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Apply one of the 8 rotations/flips to uint8 (b, H, W, 3) images: k % 4 quarter
    turns, then a horizontal flip when k >= 4. ``k`` is an int or one per image."""
    if isinstance(k, int):
        out = torch.rot90(images, k % 4, dims=(1, 2))
        return out.flip(2) if k >= 4 else out
    out = images.clone()
    for v in torch.unique(k).tolist():
        sel = k == v
        out[sel] = dihedral(images[sel], int(v))
    return out


def lr_schedule(optimizer, kind: str, lr: float, total_steps: int, warmup: float):
    """Linear warm-up over ``warmup`` of the steps then linear decay to 0, or one-cycle."""
    total_steps = max(1, total_steps)
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps,
                                                   pct_start=max(warmup, 1e-3))
    warm = int(math.ceil(warmup * total_steps))

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _prefetch(items, depth: int = 3):
    """Iterate ``items`` one step ahead in a thread, so reading images overlaps compute.
    Stopping early (an error in the loop) stops the thread too."""
    import queue
    import threading

    q, done, stop = queue.Queue(maxsize=depth), object(), threading.Event()

    def put(x):
        while not stop.is_set():
            try:
                return q.put(x, timeout=0.1)
            except queue.Full:
                pass

    def work():
        try:
            for it in items:
                if stop.is_set():
                    return
                put(it)
            put(done)
        except BaseException as e:  # handed to the consumer
            put(e)

    thread = threading.Thread(target=work, daemon=True, name="prefetch")
    thread.start()
    try:
        while (it := q.get()) is not done:
            if isinstance(it, BaseException):
                raise it
            yield it
    finally:
        stop.set()
        thread.join()


def macro_f1(labels, preds, n_classes: int) -> float:
    from core.analysis.evaluation import classification_report

    return classification_report(labels, preds, [str(i) for i in range(n_classes)])["macro_f1"]


class _Images:
    """uint8 training images by row: in memory when small, else read per batch."""

    def __init__(self, dataset, rows):
        self.dataset, self.rows = dataset, np.asarray(rows)
        size = dataset.image_size
        self.memory = None
        if len(rows) * size * size * 3 <= PRELOAD_BYTES:
            self.memory = torch.from_numpy(dataset.batch(self.rows))

    def get(self, positions: np.ndarray) -> torch.Tensor:
        """Images at ``positions`` (indices into ``rows``)."""
        if self.memory is not None:
            return self.memory[torch.from_numpy(positions)]
        order = np.argsort(self.rows[positions])  # sources read sorted rows faster
        out = np.empty((len(positions), *self.dataset.batch(self.rows[positions[:1]]).shape[1:]), np.uint8)
        out[order] = self.dataset.batch(self.rows[positions][order])
        return torch.from_numpy(out)


# ---------------------------------------------------------------- model set-up


def _names(id2label) -> list[str]:
    return [str(v).lower() for _, v in sorted((int(k), v) for k, v in (id2label or {}).items())]


def _std_classifier(ck, labels: dict) -> nn.Linear | None:
    """The HF classifier of ``ck.model`` sized for ``labels`` (a fresh one when the
    checkpoint predicts other classes), or None when there is no such classifier."""
    model = ck.model
    clf = getattr(model, "classifier", None)
    if model is ck.backbone or not isinstance(clf, nn.Linear) or ck.classifier_pooling is None:
        return None
    if clf.out_features != len(labels) or _names(ck.id2label) != _names(labels):
        # another task's head (ImageNet, another galaxy set): same inputs, new classes
        clf = nn.Linear(clf.in_features, len(labels)).to(device=clf.weight.device, dtype=clf.weight.dtype)
        model.classifier = clf
    model.config.num_labels = len(labels)
    model.config.id2label = dict(labels)
    model.config.label2id = {v: k for k, v in labels.items()}
    ck.id2label = dict(labels)
    return clf


class _Net(nn.Module):
    """images -> logits for training: backbone -> the pooled features the head reads
    (for HF's classifier, exactly what its ``*ForImageClassification`` feeds it) -> head."""

    def __init__(self, ck, head: nn.Module, pooling: str):
        super().__init__()
        self.ck, self.head, self.pooling = ck, head, pooling
        self.body = ck.backbone

    def head_inputs(self, pixel_values):
        """What the trained head sees (used for head-only feature caching)."""
        return self.ck.pool(self.ck.backbone(pixel_values=pixel_values), self.pooling)

    def classify(self, feats):
        return self.head(feats)

    def forward(self, pixel_values):
        return self.head(self.head_inputs(pixel_values))


# ---------------------------------------------------------------- training


@dataclasses.dataclass
class _Run:
    """Everything one finetuning run trains with, built by `_prepare`."""

    ck: object  # core.models.load.Checkpoint
    net: _Net
    head_module: nn.Module  # the module that is trained in head-only mode
    trained_head: nn.Module | None  # a core.models.heads head (MLP, or linear without an HF classifier)
    pooling: str
    trainable: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    device: torch.device
    lr: float
    bf16: bool  # autocast in bfloat16 (weights and optimiser state stay float32)


def finetune(dataset, model_ref: str, mode: str, head: str = "linear", epochs: int | None = None,
             lr: float | None = None, batch_size: int = 32, out=None, device: str = "auto", seed: int = 42,
             warmup: float = 0.1, schedule: str = "linear", augment: bool = True, hidden: int | None = None,
             weight_decay: float = 0.0, precision: str = "auto", cache=None, progress: bool = True,
             log=print) -> Path:
    """Finetune ``model_ref`` on ``dataset`` (a `core.data.base.Dataset`) and save it at ``out``.

    Trains on the "train" rows, reports validation macro F1 on the "test" rows
    each epoch (a stratified 10% of train when there is no test split).
    ``mode``: "head" (frozen backbone) or "full". ``head``: linear | mlp1 | mlp2 | mlp3.
    ``precision``: "auto" (bf16 autocast where the device computes bf16 natively), "bf16" or "fp32".
    Returns the checkpoint folder, loadable with ``load_checkpoint("dir:<out>")``.
    """
    from core.data.sources import normalize_ref

    out, epochs = _check_options(mode, head, schedule, out, epochs, batch_size, warmup)
    dev = _device(device)
    bf16 = _use_bf16(precision, dev)
    t_start = time.time()
    train, val, val_name = _rows(dataset, seed)
    labels = {i: c for i, c in enumerate(dataset.class_names)}
    model_ref = normalize_ref(model_ref)
    r = _prepare(dataset, model_ref, mode, head, hidden, labels, train, dev, cache, seed, lr, weight_decay,
                 schedule, warmup, epochs, batch_size, bf16)
    n_params = sum(p.numel() for p in r.trainable)
    log(f"finetune {mode} ({head} head) of {model_ref} [{r.ck.family}, {n_params / 1e6:.2f}M trainable] on "
        f"{dataset.source}: {len(train)} train / {len(val)} validation ({val_name}), {epochs} epochs, "
        f"lr {r.lr:g}, batch {batch_size}, {schedule} schedule, {dev.type} {'bf16' if bf16 else 'fp32'}")
    loop = _train_head_only if mode == "head" else _train_full
    with _training_attention(r):
        history = loop(r, dataset, train, val, epochs, batch_size, augment, np.random.default_rng(seed), progress,
                       log, t_start)
    provenance = {
        "kind": "checkpoint", "mode": mode, "head": head, "base_model": model_ref, "base_mode": r.ck.mode,
        "base_fingerprint": r.ck.fingerprint, "family": r.ck.family, "dataset": dataset.source,
        "dataset_fingerprint": dataset.fingerprint, "class_names": list(dataset.class_names),
        "epochs": epochs, "lr": r.lr, "batch_size": batch_size, "schedule": schedule, "warmup": warmup,
        "weight_decay": weight_decay, "seed": seed, "augment": augment,
        "pooling": r.pooling if r.trained_head is not None else None,
        "train_rows": int(len(train)), "validation": val_name, "validation_rows": int(len(val)),
        "val_macro_f1": history[-1]["val_macro_f1"], "device": dev.type,
        "dtype": "bfloat16 autocast" if bf16 else "float32",
        "seconds": round(time.time() - t_start, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    ck = r.ck
    if r.trained_head is not None:
        ck = dataclasses.replace(ck, model=ck.backbone, head=r.trained_head.eval(),
                                 head_spec=head_spec(r.trained_head, r.pooling), id2label=dict(labels))
    _save(ck, out, provenance, history)
    log(f"saved {out} (validation macro F1 {history[-1]['val_macro_f1']:.3f}, "
        f"{provenance['seconds']:.1f} s); load it with dir:{out}")
    return out


def _check_options(mode, head, schedule, out, epochs, batch_size, warmup) -> tuple[Path, int]:
    """(out folder, epochs) after checking the options; UserError on a bad one."""
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: use head (head-only) or full (all parameters)")
    if head not in HEADS:
        raise UserError(f"unknown head {head!r}: use one of {', '.join(HEADS)}")
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}: use linear or onecycle")
    if out is None:
        raise UserError("say where to save the finetuned checkpoint with --out DIR")
    out = Path(out).expanduser().resolve()
    if out.exists() and not (out / "config.json").is_file() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not a checkpoint folder: choose another --out")
    epochs = 30 if epochs is None else int(epochs)
    if epochs < 1 or batch_size < 1 or not 0 <= warmup < 1:
        raise UserError("--epochs and --batch-size must be positive and --warmup in [0, 1)")
    return out, epochs


def _use_bf16(precision: str, dev: torch.device) -> bool:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use auto, bf16 or fp32")
    if precision == "auto":
        return dev.type == "cuda" or (dev.type == "cpu" and cpu_has_bf16())
    return precision == "bf16"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX, through oneDNN).
    Elsewhere bf16 is emulated and slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no GPU: use --device cpu or auto")
    return torch.device(device)


def _rows(dataset, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(train rows, validation rows, validation name): labelled train rows; validation
    on the test rows, else on a held-out stratified tenth of train."""
    from core.data.base import stratified_split

    labelled = dataset.labels >= 0
    train = dataset.rows("train")[labelled[dataset.rows("train")]]
    val = dataset.rows("test")[labelled[dataset.rows("test")]]
    val_name = "test"
    if len(val) == 0:
        held = stratified_split(dataset.labels[train], 0.1, seed) == "test"
        train, val, val_name = train[~held], train[held], "10% of train"
    if len(train) == 0 or len(val) == 0:
        raise UserError(f"{dataset.source} needs labelled train and test rows to finetune")
    return train, val, val_name


def _prepare(dataset, model_ref, mode, head, hidden, labels, train, dev, cache, seed, lr, weight_decay,
             schedule, warmup, epochs, batch_size, bf16=False) -> _Run:
    """Load the checkpoint, fit its classifier to ``labels`` (or build a core.models.heads head
    on the pooled features the family's classifier reads) and set up the optimiser."""
    from core.models.load import load_checkpoint

    torch.manual_seed(seed)
    n_classes = len(labels)
    ck = load_checkpoint(model_ref, device=dev, num_labels=n_classes if head == "linear" else None,
                         id2label=labels, cache=cache, dtype=torch.float32)
    if hasattr(ck.backbone, "explorer_head"):  # a previous MLP head: replaced, not saved twice
        del ck.backbone.explorer_head
    clf = _std_classifier(ck, labels) if head == "linear" else None
    pooling = ck.classifier_pooling or classifier_pooling(ck.family) or ck.default_pooling()  # MLPs read the same
    trained_head = None
    if clf is None:  # MLP, or a linear head where the HF class has no classifier to reuse
        with torch.no_grad():
            probe = ck.preprocess(torch.from_numpy(dataset.batch(train[:1])).to(dev))
            in_dim = ck.pool(ck.backbone(pixel_values=probe), pooling).shape[-1]
        torch.manual_seed(seed)
        trained_head = build_head(head, in_dim, n_classes, hidden=hidden).to(dev)
    head_module = trained_head if trained_head is not None else clf
    net = _Net(ck, head_module, pooling)
    if lr is None:
        lr = 1e-3 if mode == "head" else (1e-4 if ck.family == "vit" else 5e-5)
    ck.model.requires_grad_(mode == "full")
    trainable = list(head_module.parameters())
    for p in trainable:
        p.requires_grad_(True)
    if mode == "full":
        trainable = list(net.body.parameters()) + trainable
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    scheduler = lr_schedule(optimizer, schedule, lr, epochs * math.ceil(len(train) / batch_size), warmup)
    return _Run(ck, net, head_module, trained_head, pooling, trainable, optimizer, scheduler, dev, lr, bf16)


def _autocast(r: _Run):
    return torch.autocast(r.device.type, dtype=torch.bfloat16, enabled=r.bf16)


def _training_attention(r: _Run):
    """bf16 on a CPU: eager attention while training (PyTorch's CPU SDPA kernel is about 2x
    slower than eager in bf16: 8.4 s against 4.3 s for the demo model's 60-step workload,
    bench/cpu_precision.py), set back before the checkpoint is saved."""
    from core.models.load import eager_attention

    return eager_attention(r.ck.backbone) if r.bf16 and r.device.type == "cpu" else contextlib.nullcontext()


def _infer_chunk(dev: torch.device) -> int:
    return 256 if dev.type == "cuda" else 64


def _head_inputs(r: _Run, images: _Images, n: int, view: int = 0) -> torch.Tensor:
    """(n, d) float head inputs of the first ``n`` images (frozen backbone, no grad),
    in the dihedral orientation ``view``."""
    parts = []
    chunk = _infer_chunk(r.device)
    for s in range(0, n, chunk):
        x = images.get(np.arange(s, min(s + chunk, n))).to(r.device)
        x = dihedral(x, view) if view else x
        with torch.inference_mode(), _autocast(r):
            parts.append(r.net.head_inputs(r.ck.preprocess(x)).float().cpu())
    return torch.cat(parts)


def _train_head_only(r: _Run, dataset, train, val, epochs, batch_size, augment, rng, progress, log, t_start):
    """Head-only: the frozen backbone's outputs computed once (for up to 8
    orientations), then the head trained on them. Returns the epoch history."""
    from tqdm.auto import tqdm

    n_views = min(8, epochs) if augment else 1
    r.ck.model.eval()
    train_images = _Images(dataset, train)
    bar = tqdm(total=len(train) * n_views + len(val), unit="img", desc="backbone features",
               disable=not progress, file=sys.stderr)
    feats = []
    for v in range(n_views):
        feats.append(_head_inputs(r, train_images, len(train), v))
        bar.update(len(train))
    feats = torch.stack(feats)  # (views, n, d)
    if feats.numel() * 4 < PRELOAD_BYTES // 2:
        feats = feats.to(r.device)
    val_feats = _head_inputs(r, _Images(dataset, val), len(val))
    bar.update(len(val))
    bar.close()
    log(f"backbone features: {n_views} view(s) x {len(train)} + {len(val)} in {time.time() - t_start:.1f} s")
    del train_images

    y_train = torch.as_tensor(dataset.labels[train], dtype=torch.long)
    y_val, n_classes = np.asarray(dataset.labels[val]), len(dataset.class_names)
    history = []
    for epoch in range(epochs):
        t0 = time.time()
        r.head_module.train()
        order = rng.permutation(len(train))
        views = rng.integers(0, n_views, len(train))
        total, seen = 0.0, 0
        for s in tqdm(range(0, len(train), batch_size), desc=f"epoch {epoch + 1}/{epochs}",
                      disable=not progress, file=sys.stderr, leave=False):
            idx = order[s : s + batch_size]
            x = feats[torch.from_numpy(views[idx]).to(feats.device), torch.from_numpy(idx).to(feats.device)]
            loss = nn.functional.cross_entropy(r.head_module(x.to(r.device)), y_train[idx].to(r.device))
            _step(loss, r.optimizer, r.scheduler, r.trainable)
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        r.head_module.eval()
        with torch.no_grad():
            preds = r.net.classify(val_feats.to(r.device)).argmax(-1).cpu().numpy()
        history.append(_epoch_entry(epoch, total / seen, macro_f1(y_val, preds, n_classes), t0, r.optimizer))
        log(_epoch_line(history[-1], epochs))
    return history


def _train_full(r: _Run, dataset, train, val, epochs, batch_size, augment, rng, progress, log, t_start):
    """Full finetuning: every parameter, images read (and prefetched) per batch,
    one random flip/rotation each. Returns the epoch history."""
    from tqdm.auto import tqdm

    dev, ck, net = r.device, r.ck, r.net
    train_images, val_images = _Images(dataset, train), _Images(dataset, val)
    y_train = torch.as_tensor(dataset.labels[train], dtype=torch.long)
    y_val, n_classes = np.asarray(dataset.labels[val]), len(dataset.class_names)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    history = []
    for epoch in range(epochs):
        t0 = time.time()
        net.train()
        order = rng.permutation(len(train))
        total, seen = 0.0, 0
        chunks = (order[i : i + batch_size] for i in range(0, len(order), batch_size))
        pin = dev.type == "cuda"
        batches = ((idx, train_images.get(idx).pin_memory() if pin else train_images.get(idx)) for idx in chunks)
        if train_images.memory is None:  # read from the source: overlap it with compute
            batches = _prefetch(batches)  # (in memory, the thread only slowed the demo's epochs: 3.5 s vs 2.6 s)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not progress, file=sys.stderr, leave=False)
        for idx, x in bar:
            x = x.to(dev, non_blocking=True)
            if augment:
                x = dihedral(x, torch.from_numpy(rng.integers(0, 8, len(idx))).to(dev))
            with _autocast(r):
                logits = net(ck.preprocess(x))
            loss = nn.functional.cross_entropy(logits.float(), y_train[idx].to(dev))
            _step(loss, r.optimizer, r.scheduler, r.trainable)
            total, seen = total + loss.item() * len(idx), seen + len(idx)
            bar.set_postfix(loss=f"{total / seen:.3f}")
        net.eval()
        preds = []
        with torch.inference_mode(), _autocast(r):
            for s in range(0, len(val), _infer_chunk(dev)):
                x = val_images.get(np.arange(s, min(s + _infer_chunk(dev), len(val))))
                preds.append(net(ck.preprocess(x.to(dev))).argmax(-1).cpu())
        f1 = macro_f1(y_val, torch.cat(preds).numpy(), n_classes)
        history.append(_epoch_entry(epoch, total / seen, f1, t0, r.optimizer))
        log(_epoch_line(history[-1], epochs))
    return history


def _step(loss, optimizer, scheduler, params) -> None:
    """One optimisation step, gradients clipped at 1.0 (stabilises the from-scratch demo runs)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()


def _epoch_entry(epoch, loss, f1, t0, optimizer) -> dict:
    return {"epoch": epoch + 1, "train_loss": round(float(loss), 5), "val_macro_f1": round(float(f1), 5),
            "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - t0, 2)}


def _epoch_line(e: dict, epochs: int) -> str:
    return (f"epoch {e['epoch']:>3}/{epochs}  loss {e['train_loss']:.4f}  "
            f"val macro F1 {e['val_macro_f1']:.3f}  {e['seconds']:.1f} s")


def _save(ck, out: Path, provenance: dict, history: list) -> None:
    """Checkpoint + training log in a staging folder, renamed over ``out`` in one step."""
    with store.staged_dir(out) as staging:
        ck.save(staging, provenance)
        (staging / "training_log.json").write_text(json.dumps({**provenance, "history": history}, indent=1))


# ---------------------------------------------------------------- CLI
