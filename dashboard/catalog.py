"""The cached runs grouped the way a user thinks of them, and their names.

dataset -> model (family and size) -> mode (generic / head / full) -> checkpoint.
Plain Python (no Streamlit), built from `core.store.cache.list_runs`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MODES = ("generic", "head", "full")
MODE_HELP = {
    "generic": "the pretrained checkpoint as is: frozen features, no classifier",
    "head": "only a classification head trained on top of the frozen features",
    "full": "every parameter finetuned on the galaxy labels",
}
METHODS = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}
FAMILY_NAMES = {"dinov2": "DINOv2", "vit": "ViT", "beit": "BEiT", "swinv2": "SwinV2", "swin": "Swin"}


def dataset_label(ref: str) -> str:
    """A short human name for a dataset reference (it also appears in shared links)."""
    prefix, _, body = str(ref).partition(":")
    body = body.split("?", 1)[0].rstrip("/")
    name = Path(body).name or body
    if prefix == "synthetic":
        return f"{name} (synthetic)"
    if prefix == "h5":
        return Path(name).stem
    return name or str(ref)


def model_label(run: dict) -> str:
    family = run.get("family") or "model"
    size = run.get("size") or (f"{run['dim']}-d" if run.get("dim") else "")
    return f"{FAMILY_NAMES.get(family, family)} · {size}".strip(" ·")


def run_mode(run: dict) -> str:
    """generic / head / full as recorded; a run without a recorded mode is generic
    when it has no head, else 'finetuned' (we do not guess head vs full)."""
    mode = run.get("mode")
    if mode in MODES:
        return mode
    return "finetuned" if run.get("has_head") else "generic"


def is_random_stand_in(run: dict) -> bool:
    """An old demo's 'generic' checkpoint: randomly initialised, not pretrained."""
    if run.get("random_init") or run.get("stand_in"):
        return True
    return is_demo_generic(run) and not run.get("pretraining")


def is_demo_generic(run: dict) -> bool:
    """The offline demo's generic checkpoint (self-supervised since the pretrain verb; random before)."""
    return str(run.get("model", "")).startswith("demo:") and run_mode(run) == "generic"


DEMO_GENERIC_NOTE = ("The offline demo's generic checkpoint is a self-supervised DINOv2-architecture model "
                     "(0.83M parameters) pretrained with DINO on synthetic galaxies without labels: the offline "
                     "stand-in for facebook/dinov2-*, not the real foundation model.")


def checkpoint_label(run: dict) -> str:
    return f"{run.get('model')} · {run.get('pooling', '?')} pooling · split {run.get('split', 'all')}"


def unique_labels(items, label_fn) -> dict:
    out: dict[str, object] = {}
    for item in items:
        label = base = label_fn(item)
        n = 2
        while label in out and out[label] != item:
            label, n = f"{base} #{n}", n + 1
        out.setdefault(label, item)
    return out


@dataclass
class Catalog:
    """The cached runs, grouped for the sidebar. Built from `core.store.cache.list_runs`."""

    features: list[dict] = field(default_factory=list)
    projections: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    damaged: list[dict] = field(default_factory=list)  # core.store.cache.list_damaged: shown, never dropped

    @classmethod
    def from_runs(cls, runs: list[dict], damaged: list[dict] | None = None) -> "Catalog":
        cat = cls(damaged=list(damaged or []))
        for r in runs:
            {"features": cat.features, "projection": cat.projections,
             "evaluation": cat.evaluations}.get(r.get("kind"), []).append(r)
        return cat

    def __bool__(self) -> bool:
        return bool(self.features)

    def damaged_lines(self) -> list[str]:
        """One Markdown line per damaged or unfinished file: what it is, why, and the fix."""
        lines = []
        for d in self.damaged:
            what = " · ".join(f"`{d[k]}`" for k in ("dataset", "model") if d.get(k))
            state = "unfinished" if d.get("unfinished") else "damaged"
            lines.append(f"- {d['kind']} `{d['key']}` {state}" + (f" ({what})" if what else "")
                         + f": {d['damaged']}. To recompute: {d['fix']}")
        return lines

    def datasets(self) -> dict[str, str]:
        """label -> dataset reference; datasets with predictions and more galaxies first."""
        refs = {}
        for r in self.features:
            best = refs.get(r["dataset"], (0, 0))
            refs[r["dataset"]] = max(best, (int(bool(r.get("has_head"))), int(r.get("rows") or 0)))
        order = sorted(refs, key=lambda d: (-refs[d][0], -refs[d][1], d))
        return unique_labels(order, dataset_label)

    def models(self, dataset: str) -> list[str]:
        """Model labels (family · size) with runs on this dataset; models with a finetuned run
        first (the app opens on the first), otherwise in cache order."""
        labels, finetuned = [], set()
        for r in self.features:
            if r["dataset"] == dataset:
                if model_label(r) not in labels:
                    labels.append(model_label(r))
                if run_mode(r) != "generic":
                    finetuned.add(model_label(r))
        return sorted(labels, key=lambda m: m not in finetuned)

    def runs(self, dataset: str, model: str | None = None, mode: str | None = None) -> list[dict]:
        return [r for r in self.features if r["dataset"] == dataset
                and (model is None or model_label(r) == model)
                and (mode is None or run_mode(r) == mode)]

    def modes(self, dataset: str, model: str) -> list[str]:
        found = {run_mode(r) for r in self.runs(dataset, model)}
        return [m for m in (*MODES, "finetuned") if m in found]

    def counterpart(self, run: dict, mode: str) -> dict | None:
        """The run of the same dataset and model in another mode (first one cached)."""
        if run_mode(run) == mode:
            return run
        others = self.runs(run["dataset"], model_label(run), mode)
        same_pool = [r for r in others if r.get("pooling") == run.get("pooling")]
        return (same_pool or others or [None])[0]

    def placeable(self, run: dict) -> list[dict]:
        """Runs of the same checkpoint on other datasets (e.g. the real photos), whose
        galaxies can be placed into this run's map."""
        return [r for r in self.features if r["model"] == run["model"] and r["dataset"] != run["dataset"]
                and r.get("pooling") == run.get("pooling") and r.get("dim") == run.get("dim")]

    def finetuned_for(self, run: dict) -> dict | None:
        """The finetuned run to compare with: this one when finetuned, else full, else head."""
        if run_mode(run) != "generic":
            return run
        return self.counterpart(run, "full") or self.counterpart(run, "head") or self.counterpart(run, "finetuned")

    def projection(self, features_key: str, method: str, aligned_to: str | None = None) -> dict | None:
        """The cached projection of a features run; prefer one aligned to ``aligned_to``,
        then an unaligned one, then the newest."""
        found = [p for p in self.projections if p.get("features_run") == features_key and p.get("method") == method]
        if not found:
            return None
        found.sort(key=lambda p: (p.get("aligned_to") == aligned_to and aligned_to is not None,
                                  p.get("aligned_to") is None, str(p.get("created", ""))), reverse=True)
        return found[0]

    def projection_methods(self, features_key: str) -> list[str]:
        return [m for m in METHODS if self.projection(features_key, m)]

    def evaluation(self, features_key: str) -> dict | None:
        for e in self.evaluations:
            if e.get("features_run") == features_key or e.get("key") == features_key:
                return e
        return None
