"""`hf:OWNER/NAME` or `hf:LOCAL_DIR`: a Hugging Face dataset with `image` + `label` columns.

As in `matthieulel/galaxy10_decals` (train 15,962 / test 1,774; label a plain
uint8) and `matthieulel/galaxy_mnist` (plus `id_str`). A hub id is looked up in
the local HF cache first and fetched only if missing; offline that fails fast with
a message saying how to point at a local copy. A local folder may be a
`save_to_disk` folder or a folder of parquet files (the hub layout).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.data.sky import map_columns
from core.data.base import GALAXY10_CLASSES, GALAXY_MNIST_CLASSES, Dataset, SourceError, resize_square, to_rgb_uint8

KNOWN_CLASSES = {"galaxy10_decals": GALAXY10_CLASSES, "galaxy10": GALAXY10_CLASSES,
                 "galaxy_mnist": GALAXY_MNIST_CLASSES}


class HFDataset(Dataset):
    parts: list  # [(split name, datasets.Dataset)], rows numbered through them in order
    offsets: np.ndarray

    def _locate(self, i: int):
        part = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.parts[part][1], int(i - self.offsets[part])

    def image(self, i: int) -> np.ndarray:
        table, j = self._locate(int(i))
        return to_rgb_uint8(table[j]["image"])

    def _load(self, rows):
        return np.stack([resize_square(self.image(int(i)), self.image_size) for i in rows])


def _load_local(path: Path):
    import datasets

    datasets.disable_progress_bars()
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        d = datasets.load_from_disk(str(path))
        return d if isinstance(d, datasets.DatasetDict) else datasets.DatasetDict({"train": d})
    files = sorted(p for p in path.rglob("*.parquet"))
    if not files:
        raise SourceError(f"{path} holds neither a save_to_disk dataset nor parquet files")
    by_split: dict = {}
    for f in files:
        split = next((s for s in ("train", "test", "validation") if f.name.startswith(s) or f.parent.name == s), "train")
        by_split.setdefault(split, []).append(str(f))
    return datasets.load_dataset("parquet", data_files=by_split)


def _hub_snapshot(name: str) -> Path:
    from core.data.hub import snapshot

    try:
        return snapshot(name, ["*.parquet", "*.json", "README.md"], repo_type="dataset")
    except Exception as e:
        raise SourceError(
            f"could not reach dataset hf:{name} ({type(e).__name__}): with no network, copy it elsewhere "
            "(datasets' save_to_disk, or its parquet files) and use hf:/path/to/folder"
        ) from None


def open_hf(ref: str, body: str, class_names: str | None = None, ra: str | None = None, dec: str | None = None, **_):
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise SourceError("hf: datasets need the `datasets` package: pip install datasets") from None
    local = Path(body).expanduser()
    if local.exists():
        folder, name = local.resolve(), local.name
    elif body.count("/") == 1 and not body.startswith((".", "/")):
        folder, name = _hub_snapshot(body), body.split("/")[1]
    else:
        raise SourceError(f"{body} is neither an existing folder nor a hub id OWNER/NAME")
    dd = _load_local(folder)
    parts = [(s, dd[s]) for s in sorted(dd.keys(), key=lambda s: (s != "train", s))]
    for split, table in parts:
        missing = {"image", "label"} - set(table.column_names)
        if "image" in missing:
            raise SourceError(f"split {split!r} of {ref} has no 'image' column (columns: {table.column_names})")

    labels, ids, splits, metas = [], [], [], []
    for split, table in parts:
        n = len(table)
        labels.append(np.asarray(table["label"], dtype=np.int64) if "label" in table.column_names else np.full(n, -1))
        ids.append(np.asarray(table["id_str"], dtype=str) if "id_str" in table.column_names
                   else np.array([f"{split}-{i}" for i in range(n)]))
        splits.append(np.full(n, "train" if split == "train" else "test"))
        extra = [c for c in table.column_names if c not in ("image", "label")]
        metas.append(table.select_columns(extra).to_pandas() if extra else pd.DataFrame(index=range(n)))

    label_feature = parts[0][1].features.get("label")
    if class_names:
        names = [s.strip() for s in class_names.split(",")]
    elif getattr(label_feature, "names", None):
        names = list(label_feature.names)
    elif name.lower() in KNOWN_CLASSES:
        names = list(KNOWN_CLASSES[name.lower()])
    else:
        top = max(int(lab.max()) if len(lab) else -1 for lab in labels)
        names = [f"class {k}" for k in range(top + 1)]

    first = to_rgb_uint8(parts[0][1][0]["image"])
    ds = HFDataset(
        source=ref, class_names=names, ids=np.concatenate(ids), labels=np.concatenate(labels),
        splits=np.concatenate(splits), metadata=map_columns(pd.concat(metas, ignore_index=True), ra, dec, where=ref),
        image_size=int(first.shape[0]),
        content_key="hf:" + ",".join(f"{s}={t._fingerprint}" for s, t in parts),
    )
    ds.parts = parts
    ds.offsets = np.cumsum([0] + [len(t) for _, t in parts])[:-1]
    return ds
