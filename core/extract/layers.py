"""Per-layer features, taken from the same forward pass as the run's features.

``python -m core extract --layers all|LIST`` stores, beside a features run, the
pooled output of each chosen block: the CLS token after the block and the mean
of its patch tokens (ViT, BEiT, DINOv2), or the mean of a stage's tokens
(SwinV2 has no CLS token: one entry per stage). Values are float16 to bound the
size (DINOv2-B, 12 blocks x 2 x 768: 36 KB per galaxy).

One parquet per features run, same key: ``<cache>/layers/<features key>.parquet``,
columns ``row``, ``id``, ``split``, ``label`` and ``layerLL_cls`` /
``layerLL_mean`` (fixed_size_list<float16>[d]); provenance ``kind="layers"``.
Blocks are numbered 1..L as in the papers; the stored values are the residual
stream after the block, before the model's final LayerNorm.

The hidden states come from HF's ``output_hidden_states``, switched on by a
pre-hook on the backbone for the batch pass only: no second forward pass.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from core.store import cache as store
from core.store.embeddings import embedding_column
from core.errors import UserError

KINDS = ("cls", "mean")
FORMAT = 1


def block_count(config: dict) -> int:
    """Blocks (ViT-style) or stages (SwinV2) in a checkpoint, from its config.json dict."""
    if config.get("depths"):
        return len(config["depths"])
    n = config.get("num_hidden_layers")
    if not n:
        raise UserError(f"cannot tell how many blocks a {config.get('model_type')!r} checkpoint has: "
                        "per-layer features need num_hidden_layers or depths in its config.json")
    return int(n)


def unit_name(family: str) -> str:
    """What one layer is called for this family: "stage" (SwinV2) or "block"."""
    return "stage" if family in ("swinv2", "swin") else "block"


def parse_layers(spec: str | None, n_blocks: int, unit: str = "block") -> list[int] | None:
    """``"all"``, ``"last"`` or a list like ``"1,4,9-12"`` -> sorted block numbers in 1..n_blocks.

    None or "" -> None (no per-layer features). A number outside 1..n_blocks is a
    UserError that says the range.
    """
    if spec is None or str(spec).strip() == "":
        return None
    spec = str(spec).strip().lower()
    if spec == "all":
        return list(range(1, n_blocks + 1))
    if spec == "last":
        return [n_blocks]
    out = set()
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise UserError(f"--layers {spec!r}: use all, last, or {unit} numbers like 1,4,9-12")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or lo < 1 or hi > n_blocks:
            raise UserError(f"--layers {spec!r}: this checkpoint has {unit}s 1-{n_blocks}")
        out.update(range(lo, hi + 1))
    return sorted(out)


def column(layer: int, kind: str) -> str:
    return f"layer{layer:02d}_{kind}"


def kinds_for(family: str) -> tuple[str, ...]:
    return ("mean",) if unit_name(family) == "stage" else KINDS


def layers_path(features_path) -> Path:
    """Where the per-layer features of a features file live (same key, ``layers/``)."""
    features_path = Path(features_path)
    return features_path.parent.parent / "layers" / features_path.name


def cached(path, layers: list[int] | None) -> dict | None:
    """Provenance of an intact layers file holding every block in ``layers``, else None."""
    prov = store.provenance(path)
    if prov is None or prov.get("kind") != "layers":
        return None
    if layers and not set(layers) <= set(prov.get("layers", [])):
        return None
    return prov if store.read_table(path, columns=["row"]) is not None else None


def requested(ckpt_path, spec: str | None, family: str) -> list[int] | None:
    """Block numbers asked for by ``--layers``, validated against the checkpoint's config."""
    if spec is None or str(spec).strip() == "":
        return None
    config = json.loads((Path(ckpt_path) / "config.json").read_text())
    return parse_layers(spec, block_count(config), unit_name(family))


# ---------------------------------------------------------------- the batch pass


class HiddenStates:
    """Switch on ``output_hidden_states`` for every call of the backbone and keep
    the last call's hidden states; used as a context manager around the batch loop.

    Works for a bare backbone and for a classifier that calls its backbone inside.
    """

    def __init__(self, backbone):
        self.backbone = backbone
        self.states = None
        self._hooks = []

    def __enter__(self):
        def ask(module, args, kwargs):
            kwargs["output_hidden_states"] = True
            return args, kwargs

        def keep(module, args, out):
            self.states = out.hidden_states if hasattr(out, "hidden_states") else out[2]

        self._hooks = [self.backbone.register_forward_pre_hook(ask, with_kwargs=True),
                       self.backbone.register_forward_hook(keep)]
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.states = None

    def pop(self):
        states, self.states = self.states, None
        if states is None:
            raise RuntimeError("the backbone returned no hidden states")
        return states


def pool_layers(hidden_states, layers: list[int], has_cls: bool, prefix: int = 1) -> dict:
    """``{column: (b, d) tensor}`` for each chosen block from HF's hidden states
    (a tuple: embeddings, then one (b, tokens, d) output per block or stage)."""
    out = {}
    for layer in layers:
        h = hidden_states[layer]
        if h.dim() == 4:  # (b, c, h, w) maps
            h = h.flatten(2).transpose(1, 2)
        if has_cls:
            out[column(layer, "cls")] = h[:, 0]
            out[column(layer, "mean")] = h[:, prefix:].mean(1)
        else:
            out[column(layer, "mean")] = h.mean(1)
    return out


class LayerWriter:
    """Appends per-layer features batch by batch; the file appears only on ``close(ok=True)``."""

    def __init__(self, path, provenance: dict):
        self.path, self.provenance = Path(path), provenance
        self._w = None

    def write(self, ds, chunk, pooled: dict):
        arrays = {name: t.float().cpu().numpy() for name, t in pooled.items()}
        if self._w is None:
            fields = [pa.field("row", pa.int64()), pa.field("id", pa.string()), pa.field("split", pa.string()),
                      pa.field("label", pa.int64())]
            fields += [pa.field(name, pa.list_(pa.float16(), a.shape[1])) for name, a in arrays.items()]
            self.provenance["dims"] = {name: int(a.shape[1]) for name, a in arrays.items()}
            self._w = store.AtomicParquetWriter(self.path, pa.schema(fields), self.provenance).__enter__()
        cols = {"row": pa.array(chunk, pa.int64()), "id": pa.array(ds.ids[chunk].astype(str)),
                "split": pa.array(ds.splits[chunk].astype(str)), "label": pa.array(ds.labels[chunk], pa.int64())}
        cols.update({name: embedding_column(a, np.float16) for name, a in arrays.items()})
        self._w.write(pa.table(cols))

    def close(self, ok: bool = True, exc=None):
        if self._w is not None:
            self._w.__exit__(None if ok else type(exc or RuntimeError()), exc, None)
            self._w = None


def provenance_for(info: dict, features_key: str, layers: list[int], family: str) -> dict:
    return dict(kind="layers", format=FORMAT, features_run=features_key, layers=list(layers),
                kinds=list(kinds_for(family)), unit=unit_name(family), dtype="float16",
                **{k: info.get(k) for k in ("dataset", "dataset_fingerprint", "model", "model_fingerprint",
                                            "family", "mode", "split")})


# ---------------------------------------------------------------- reading


def read_layer(path, layer: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids (n,) str, labels (n,) int64, splits (n,) str, X (n, d) float32) of one stored block."""
    name = column(layer, kind)
    table = store.read_table(path, columns=["id", "label", "split", name])
    if table is None:
        raise UserError(f"per-layer features {path} are unreadable or incomplete; extract them again")
    col = table.column(name).combine_chunks()
    X = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1).astype(np.float32)
    return (table.column("id").to_numpy(zero_copy_only=False).astype(str), table.column("label").to_numpy(),
            table.column("split").to_numpy(zero_copy_only=False).astype(str), X)


def layer_runs(cache=None) -> list[dict]:
    """Every cached per-layer features file (``list_runs`` entries of kind "layers")."""
    return [r for r in store.list_runs(cache) if r.get("kind") == "layers"]
