"""`python -m core pretrain`: self-supervised DINO pretraining of a DINOv2-architecture model, no labels.

Self-distillation as in DINO (Caron et al. 2021) for transformers' ``Dinov2Model``:
a student and an EMA teacher see different crops of the same galaxy; the
teacher's centred, sharpened output over K prototypes is the target of the
student's, so the model learns what stays the same across crops. The
projection head keeps BatchNorm: at this tiny scale the loss otherwise sits at
ln K (uniform collapse). Galaxy-safe multi-crop: 2 global + several local
crops, each a random crop with flips and 90-degree rotations and a small
brightness jitter that keeps the colours (no hue shift: colour is morphology).

It reads images only: ``dataset.labels`` is never touched, so the same seed
gives the same weights whatever the labels say.

The checkpoint (the teacher's backbone) is a standard ``save_pretrained``
folder, loadable as ``dir:OUT``: ``model.safetensors``, ``config.json``,
``preprocessor_config.json``, ``dino_head.safetensors`` (to continue),
``training_log.json`` and ``explorer.json`` (provenance). It appears in one
rename. After every epoch the full training state is saved beside it
(``.OUT.resume/state.pt``, atomic); a run killed mid-way resumes from its last
finished epoch when started again with the same arguments.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.store import cache as store
from core.errors import UserError

# Architectures by name. nano: the demo's 0.83M-parameter model; small: DINOv2-S/14.
CONFIGS = {
    "nano": dict(image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                 mlp_ratio=4, layerscale_value=1.0),
    "small": dict(image_size=224, patch_size=14, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                  mlp_ratio=4, layerscale_value=1e-5),
}
# Galaxy images are centred on a dark sky: mean/std 0.5 keeps the sky near -1, the galaxy positive.
# do_center_crop said outright: DINOv2's processor class (BitImageProcessor) otherwise defaults to a
# 224-px centre crop, which pads a 64-px image to 224 px in HF's own pipeline
PROCESSOR = {"do_resize": True, "resample": 3, "do_center_crop": False, "do_rescale": True,
             "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
DEFAULTS = dict(epochs=10, batch_size=64, lr=1e-3, min_lr=1e-5, warmup=0.1, weight_decay=0.04,
                local_crops=4, global_scale=(0.35, 1.0), local_scale=(0.08, 0.35), brightness=0.2,
                out_dim=256, head_hidden=512, bottleneck=128, student_temp=0.1,
                teacher_temp=0.06, warmup_teacher_temp=0.04, teacher_temp_warmup=0.3,
                momentum=0.99, center_momentum=0.9, clip_grad=3.0, seed=0)
STATE_VERSION = 1


# ---------------------------------------------------------------- model pieces


class DINOHead(nn.Module):
    """(b, in_dim) features -> (b, out_dim) prototype scores.

    3-layer MLP with BatchNorm + GELU, an L2-normalised bottleneck, then a
    linear layer with unit-norm rows (DINO's weight-normalised last layer)."""

    def __init__(self, in_dim: int, out_dim: int = 256, hidden: int = 512, bottleneck: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.prototypes, dim=-1))


class _Branch(nn.Module):
    """Backbone + head: a list of crop batches -> scores of all crops, (sum b_i, out_dim)."""

    def __init__(self, backbone: nn.Module, head: DINOHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        cls = [self.backbone(pixel_values=x).last_hidden_state[:, 0] for x in crops]  # one pass per crop size
        return self.head(torch.cat(cls).float())


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, n_global: int,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Cross-entropy between the teacher's centred, sharpened targets and the student.

    ``student`` (n_crops * b, K) for all crops, global crops first; ``teacher``
    (n_global * b, K) for the global crops. Each teacher view is the target of
    every student view of a *different* crop."""
    s = (student / student_temp).chunk(len(student) // (len(teacher) // n_global))
    t = F.softmax((teacher - center) / teacher_temp, dim=-1).detach().chunk(n_global)
    total, terms = 0.0, 0
    for iq, q in enumerate(t):
        for v, sv in enumerate(s):
            if v == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(sv, dim=-1), dim=-1).mean()
            terms += 1
    return total / terms


def schedule(step: int, total: int, start: float, end: float, warmup_steps: int = 0, warmup_from: float = 0.0):
    """Linear warm-up from ``warmup_from`` to ``start``, then cosine from ``start`` to ``end``."""
    if step < warmup_steps:
        return warmup_from + (start - warmup_from) * step / max(1, warmup_steps)
    t = (step - warmup_steps) / max(1, total - warmup_steps)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(1.0, t)))


# ---------------------------------------------------------------- crops


def random_crops(images: torch.Tensor, size: int, scale: tuple[float, float], brightness: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Galaxy-safe random crops of float (b, 3, H, W) images in [0, 1] -> (b, 3, size, size).

    Per image: a square crop covering a ``scale`` fraction of the area at a
    random position inside the image, one of the 8 flips/90-degree rotations,
    and one brightness factor in [1 - brightness, 1 + brightness] for all
    three bands (colours unchanged). One batched ``grid_sample``."""
    b = images.shape[0]

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    side = uniform(*scale).sqrt()  # crop side as a fraction of the image side
    cx = (1 - side) * (2 * torch.rand(b, generator=generator) - 1)  # centre keeps the crop inside
    cy = (1 - side) * (2 * torch.rand(b, generator=generator) - 1)
    k = torch.randint(0, 8, (b,), generator=generator)
    angle = (k % 4).float() * (math.pi / 2)
    flip = torch.where(k >= 4, -1.0, 1.0)
    cos, sin = torch.cos(angle).round(), torch.sin(angle).round()
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = side * cos * flip, -side * sin
    theta[:, 1, 0], theta[:, 1, 1] = side * sin * flip, side * cos
    theta[:, 0, 2], theta[:, 1, 2] = cx, cy
    grid = F.affine_grid(theta.to(images.device), [b, 3, size, size], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = uniform(1 - brightness, 1 + brightness).to(images.device).view(b, 1, 1, 1)
    return (out * gain).clamp(0, 1)


def local_size(global_size: int, patch: int) -> int:
    """Side of the local crops: about 0.45 of the global side, whole patches (64/8 -> 32, 224/14 -> 98)."""
    return max(2 * patch, round(global_size * 0.45 / patch) * patch)


# ---------------------------------------------------------------- set-up


def model_config(config: str | dict) -> dict:
    """``nano`` | ``small`` | a JSON file path | a dict -> Dinov2Config keyword arguments."""
    if isinstance(config, dict):
        return dict(config)
    if config in CONFIGS:
        return dict(CONFIGS[config])
    path = Path(config).expanduser()
    if not path.is_file():
        raise UserError(f"--config {config!r} is neither {' nor '.join(CONFIGS)} nor a JSON file")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"--config {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"--config {path} must hold a JSON object of Dinov2Config fields")
    return cfg


def _start_model(config, model_ref, cache):
    """(Dinov2Model in float32, processor config, what it started from)."""
    import transformers as tf

    if model_ref:
        from core.data.sources import normalize_ref
        from core.models.load import load_checkpoint

        ref = normalize_ref(model_ref)
        ck = load_checkpoint(ref, device="cpu", cache=cache, dtype=torch.float32)
        if ck.family != "dinov2":
            raise UserError(f"{ref} is a {ck.family} model: pretrain continues DINOv2-architecture models only")
        backbone = ck.backbone
        proc = dict(ck.processor_config)
        head_file = Path(ck.path) / "dino_head.safetensors"
        return backbone, proc, {"model": ref, "fingerprint": ck.fingerprint}, head_file if head_file.is_file() else None
    cfg = model_config(config)
    try:
        dcfg = tf.Dinov2Config(**cfg)
    except (TypeError, ValueError) as e:
        raise UserError(f"--config: not a valid Dinov2Config ({e})") from None
    backbone = tf.Dinov2Model(dcfg)
    size = dcfg.image_size
    proc = {**PROCESSOR, "size": {"height": size, "width": size}}
    return backbone, proc, {"config": config if isinstance(config, str) else "custom", "architecture": cfg}, None


def _state_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.resume")


def _save_state(path: Path, state: dict) -> None:
    """The whole training state after an epoch, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with store.atomic_path(path) as tmp:
        torch.save(state, tmp)


# ---------------------------------------------------------------- training


def pretrain(dataset, out, config: str | dict = "nano", model_ref: str | None = None, device: str = "auto",
             cache=None, progress: bool = True, log=print, command: str | None = None, **options) -> Path:
    """DINO-pretrain a DINOv2-architecture model on ``dataset``'s images (all rows, labels unused).

    ``config``: ``nano`` | ``small`` | JSON path | dict (a fresh model), or
    ``model_ref`` (``hf:``/``dir:``/``demo:``) to continue from a checkpoint.
    ``options`` override :data:`DEFAULTS` (epochs, batch_size, lr, local_crops...).
    Returns ``out``, loadable as ``dir:<out>``.
    """
    o = _options(options)
    out, device = _check_out(out), _check_device(device)
    dev = torch.device(device)
    n = len(dataset)
    steps_per_epoch = n // o["batch_size"]
    if steps_per_epoch < 1:
        raise UserError(f"{dataset.source} has {n} images: fewer than one batch of {o['batch_size']}")

    torch.manual_seed(o["seed"])  # a fresh model's init and the head's: same seed, same weights
    backbone, proc, start, head_file = _start_model(config, model_ref, cache)
    run = _Run(o, dev, steps_per_epoch, backbone, proc, head_file, log)
    # what must match for a saved state to be resumed
    identity = {"dataset": dataset.fingerprint, "start": start, "options": {k: list(v) if isinstance(v, tuple) else v
                                                                            for k, v in o.items()},
                "version": STATE_VERSION}
    state_file = _state_dir(out) / "state.pt"
    first_epoch = run.resume(state_file, identity, log)

    n_params = sum(p.numel() for p in backbone.parameters())
    log(f"pretrain (DINO) {start.get('model') or start['config']} [{n_params / 1e6:.2f}M] on {dataset.source}: "
        f"{n} images (labels unused), {o['epochs']} epochs x {steps_per_epoch} steps, batch {o['batch_size']}, "
        f"2 x {run.size} px + {o['local_crops']} x {run.small} px crops, {device}")
    t_start = time.time()
    images = _ImageStore(dataset, dev, progress)
    for epoch in range(first_epoch, o["epochs"]):
        e = run.epoch(images, epoch, progress)
        log(f"epoch {e['epoch']:>3}/{o['epochs']}  loss {e['loss']:.4f}  teacher entropy "
            f"{e['teacher_entropy']:.3f} (ln K {e['ln_K']:.3f})  {e['seconds']:.1f} s")
        _save_state(state_file, {"identity": identity, **run.state()})

    provenance = {
        "kind": "checkpoint", "mode": "generic", "method": "DINO self-distillation (no labels)",
        "labels_used": False, **start, "family": "dinov2", "dataset": dataset.source,
        "dataset_fingerprint": dataset.fingerprint, "images": n, "steps": run.total,
        "options": identity["options"], "global_crop_px": run.size, "local_crop_px": run.small, "device": device,
        "dtype": "bfloat16 autocast" if dev.type == "cuda" else "float32", "command": command,
        "torch_threads": torch.get_num_threads(),
        "seconds_this_run": round(time.time() - t_start, 1),
        "seconds_all_epochs": round(sum(e["seconds"] for e in run.history), 1),
        "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _write_checkpoint(run.teacher, proc, out, provenance, run.history)
    shutil.rmtree(_state_dir(out), ignore_errors=True)
    log(f"saved {out} ({provenance['seconds_all_epochs']:.0f} s of training); load it with dir:{out}")
    return out


def _options(options: dict) -> dict:
    """:data:`DEFAULTS` with the given options over them, checked."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise UserError(f"unknown pretrain option(s): {', '.join(sorted(unknown))}")
    o = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    if o["epochs"] < 1 or o["batch_size"] < 2 or o["local_crops"] < 0:
        raise UserError("--epochs must be >= 1, --batch-size >= 2 and --local-crops >= 0")
    return o


def _check_out(out) -> Path:
    if out is None:
        raise UserError("say where to save the pretrained checkpoint with --out DIR")
    out = Path(out).expanduser().resolve()
    if out.exists() and not (out / "config.json").is_file() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not a checkpoint folder: choose another --out")
    return out


def _check_device(device: str) -> str:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no GPU: use --device cpu or auto")
    return device


class _Run:
    """The training state of one pretraining: student and EMA teacher (backbone + DINO head), the
    centre, the optimiser, the crops' geometry and normalisation, and the history of epochs."""

    def __init__(self, o: dict, dev, steps_per_epoch: int, backbone, proc: dict, head_file, log):
        self.o, self.dev, self.steps_per_epoch = o, dev, steps_per_epoch
        self.total = steps_per_epoch * o["epochs"]
        cfg = backbone.config
        size = proc.get("size")
        self.size = size["height"] if isinstance(size, dict) and "height" in size else cfg.image_size
        self.small = local_size(self.size, cfg.patch_size)
        head = DINOHead(cfg.hidden_size, o["out_dim"], o["head_hidden"], o["bottleneck"])
        if head_file is not None:
            from safetensors.torch import load_file

            try:
                head.load_state_dict(load_file(head_file))
            except RuntimeError:
                log("      (the checkpoint's DINO head has another shape: starting a fresh head)")
        self.student = _Branch(backbone, head).to(dev)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.center = torch.zeros(1, o["out_dim"], device=dev)
        decay, no_decay = [], []
        for p in self.student.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)  # no decay on biases and norms
        self.optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                                           lr=o["lr"], weight_decay=o["weight_decay"])
        self.mean = torch.tensor(proc.get("image_mean", PROCESSOR["image_mean"]), device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(proc.get("image_std", PROCESSOR["image_std"]), device=dev).view(1, 3, 1, 1)
        self.history = []

    def resume(self, state_file: Path, identity: dict, log) -> int:
        """Load the state a killed run of the same identity saved; returns the first epoch to train."""
        if not state_file.is_file():
            return 0
        state = torch.load(state_file, map_location=self.dev, weights_only=False)
        if state.get("identity") != identity:
            log(f"a saved state of another run is in {state_file.parent}: starting over")
            return 0
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.center = state["center"].to(self.dev)
        self.history = state["history"]
        log(f"resuming from epoch {state['epoch']}/{self.o['epochs']} ({state_file})")
        return state["epoch"]

    def state(self) -> dict:
        """What ``resume`` reads back, after an epoch."""
        return {"epoch": self.history[-1]["epoch"], "student": self.student.state_dict(),
                "teacher": self.teacher.state_dict(), "optimizer": self.optimizer.state_dict(),
                "center": self.center.cpu(), "history": self.history}

    def epoch(self, images, epoch: int, progress: bool) -> dict:
        """Train one epoch; append and return its history entry."""
        from tqdm.auto import tqdm

        o = self.o
        t0 = time.time()
        gen = torch.Generator().manual_seed(o["seed"] * 100_003 + epoch)  # per epoch: a resumed run draws the same
        order = torch.randperm(len(images), generator=gen)
        self.student.train()
        self.teacher.train()  # BatchNorm of the teacher uses batch statistics, as in DINO
        sums = {"loss": 0.0, "teacher_entropy": 0.0}
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {epoch + 1}/{o['epochs']}", disable=not progress,
                   file=sys.stderr, leave=False)
        for i in bar:
            step = epoch * self.steps_per_epoch + i
            lr = schedule(step, self.total, o["lr"], o["min_lr"], int(o["warmup"] * self.total))
            t_temp = schedule(step, self.total, o["teacher_temp"], o["teacher_temp"],
                              int(o["teacher_temp_warmup"] * self.total), o["warmup_teacher_temp"])
            m = schedule(step, self.total, o["momentum"], 1.0)
            x = images.get(order[i * o["batch_size"] : (i + 1) * o["batch_size"]])
            loss, entropy = self._step(x, gen, lr, t_temp, m)
            sums["loss"] += loss
            sums["teacher_entropy"] += entropy
            bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.3f}")
        self.history.append({"epoch": epoch + 1, "loss": round(sums["loss"] / self.steps_per_epoch, 5),
                             "teacher_entropy": round(sums["teacher_entropy"] / self.steps_per_epoch, 4),
                             "ln_K": round(math.log(o["out_dim"]), 4), "lr": lr, "teacher_temp": round(t_temp, 5),
                             "momentum": round(m, 6), "seconds": round(time.time() - t0, 2)})
        return self.history[-1]

    def _step(self, x: torch.Tensor, gen, lr: float, t_temp: float, m: float) -> tuple[float, float]:
        """One optimisation step on a batch: (loss, teacher entropy)."""
        o = self.o
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        globals_ = [random_crops(x, self.size, o["global_scale"], o["brightness"], gen) for _ in range(2)]
        locals_ = [random_crops(x, self.small, o["local_scale"], o["brightness"], gen) for _ in range(o["local_crops"])]
        g_in = (torch.cat(globals_) - self.mean) / self.std
        crops = [g_in] + ([(torch.cat(locals_) - self.mean) / self.std] if locals_ else [])
        # bf16 on GPU; CPU stays fp32 (bf16 matmuls are slow on most CPUs)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.dev.type == "cuda"):
            with torch.no_grad():
                t_out = self.teacher([g_in]).float()
            s_out = self.student(crops).float()
        loss = dino_loss(s_out, t_out, self.center, 2, o["student_temp"], t_temp)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), o["clip_grad"])
        self.optimizer.step()
        with torch.no_grad():
            for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            self.center.mul_(o["center_momentum"]).add_(t_out.mean(0, keepdim=True), alpha=1 - o["center_momentum"])
            probs = F.softmax((t_out - self.center) / t_temp, dim=-1)
            entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())
        return loss.item(), entropy


class _ImageStore:
    """All images as float (n, 3, H, W) in [0, 1] on the device, read once (fine up to a few 100k at 64 px)."""

    def __init__(self, dataset, dev, progress):
        from tqdm.auto import tqdm

        rows, chunk, parts = np.arange(len(dataset)), 512, []
        for s in tqdm(range(0, len(rows), chunk), desc="reading images", disable=not progress, file=sys.stderr,
                      leave=False):
            parts.append(torch.from_numpy(dataset.batch(rows[s : s + chunk])))
        self.u8 = torch.cat(parts).to(dev).permute(0, 3, 1, 2).contiguous()  # (n, 3, H, W) uint8

    def __len__(self) -> int:
        return len(self.u8)

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        return self.u8[idx.to(self.u8.device)].float() / 255


def _write_checkpoint(teacher: _Branch, proc: dict, out: Path, provenance: dict, history: list) -> None:
    """The teacher's backbone (what DINO evaluates) + its head, in a staging folder renamed over ``out``."""
    from safetensors.torch import save_file

    with store.staged_dir(out) as staging:
        backbone = copy.deepcopy(teacher.backbone).float().cpu()
        backbone.config.architectures = ["Dinov2Model"]
        backbone.save_pretrained(staging)
        save_file({k: v.float().cpu().contiguous() for k, v in teacher.head.state_dict().items()
                   if v.dtype.is_floating_point}, staging / "dino_head.safetensors")
        (staging / "preprocessor_config.json").write_text(json.dumps(proc, indent=1))
        (staging / "explorer.json").write_text(json.dumps(provenance, indent=1, default=str))
        (staging / "training_log.json").write_text(json.dumps({**provenance, "history": history}, indent=1,
                                                              default=str))


# ---------------------------------------------------------------- CLI
