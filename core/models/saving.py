"""Writing a loaded (and possibly finetuned) checkpoint back as a folder that
`core.models.load.load_checkpoint` and plain transformers load.

The folder holds ``save_pretrained`` weights (safetensors, fp32), the image
processor settings, an MLP head beside the backbone when there is one
(``explorer_head.safetensors`` + ``explorer_head`` in config.json, see
`core.models.heads`) and ``explorer.json`` (provenance: mode, base model...). It is
written in a temp folder renamed into place, so a killed save leaves nothing
that loads.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from core.store import cache as store


def save_checkpoint(ck, out_dir, provenance: dict | None = None) -> Path:
    """Write ``ck`` (a `core.models.load.Checkpoint`) at ``out_dir`` atomically; returns the folder."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        _write(ck, tmp, provenance or {})
        store.replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write(ck, folder: Path, provenance: dict) -> None:
    dtype = ck.dtype
    ck.model.to(torch.float32)
    try:
        ck.model.save_pretrained(folder)
    finally:
        ck.model.to(dtype)
    (folder / "preprocessor_config.json").write_text(json.dumps(ck.processor_config, indent=1))
    if ck.head is not None:
        _write_head(ck, folder)
    (folder / "explorer.json").write_text(json.dumps(provenance, indent=1, default=str))


def _write_head(ck, folder: Path) -> None:
    from safetensors.torch import save_file

    from core.models.heads import head_spec

    save_file({k: v.float().contiguous() for k, v in ck.head.state_dict().items()},
              folder / "explorer_head.safetensors")
    if ck.head_spec is None:
        ck.head_spec = head_spec(ck.head)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["explorer_head"] = ck.head_spec
    cfg["id2label"] = {str(k): v for k, v in (ck.id2label or {}).items()}
    cfg["label2id"] = {v: int(k) for k, v in (ck.id2label or {}).items()}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
