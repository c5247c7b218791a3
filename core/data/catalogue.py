"""`parquet:PATH`: a catalogue of galaxies as parquet (the Galaxy Zoo DESI style).

PATH is one ``.parquet`` file or a folder of them (read in sorted order). One column
holds the image: a path (relative to the catalogue's folder, or absolute), encoded
bytes (PNG/JPEG...), or a Hugging Face ``Image`` struct ``{bytes, path}``. The other
columns are labels and metadata. Options (``parquet:PATH?image=COL&label=COL...``):

``image``        image column (default: the first of image, file, path, image_path)
``label``        integer label column (default ``label``; absent = unlabelled, -1)
``id``           stable id column (default id, id_str, objid, dr8_id, iauname; else the
                 image path, else ``row-N``)
``split``        column of "train"/"test" (default ``split``; absent = all "test")
``class_names``  comma list; ``image_size`` side of the batches (default 256);
``ra``/``dec``   the sky-position columns when not named ra/dec

Opening reads every column except the images (scalars: a few hundred MB for millions
of rows). Images are read when a batch needs them, one row group at a time, so
memory stays bounded whatever the catalogue size; an image that does not decode is
skipped and named by the extraction that meets it.
"""
from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from core.data.sky import map_columns
from core.data.base import GALAXY10_CLASSES, Dataset, SourceError, resize_square, to_rgb_uint8

IMAGE_COLUMNS = ("image", "file", "path", "image_path")
ID_COLUMNS = ("id", "id_str", "objid", "dr8_id", "iauname")


class CatalogueDataset(Dataset):
    files: list  # parquet files, in row order
    image_column: str
    image_kind: str  # "path" | "bytes" | "struct"
    root: Path  # folder that relative image paths start from
    paths: np.ndarray | None = None  # image paths (path columns only)
    groups: np.ndarray  # (g, 3) int64: first row, file index, row group index
    _cache = None  # (file, group) -> image column of that row group, a few kept
    _lock = None

    def __getstate__(self):  # Ray ships the dataset to its actors: no lock, no cached groups
        state = dict(self.__dict__)
        state.pop("_cache", None)
        state.pop("_lock", None)
        return state

    def _group_column(self, f: int, g: int):
        if self._lock is None:
            self._lock, self._cache = threading.Lock(), OrderedDict()
        with self._lock:
            col = self._cache.get((f, g))
            if col is None:
                import pyarrow.parquet as pq

                col = pq.ParquetFile(self.files[f]).read_row_group(g, columns=[self.image_column]).column(0)
                self._cache[(f, g)] = col
                while len(self._cache) > 4:
                    self._cache.popitem(last=False)
            return col

    def _encoded(self, i: int) -> bytes | str:
        if self.image_kind == "path":
            return str(self.paths[i])
        k = int(np.searchsorted(self.groups[:, 0], i, side="right") - 1)
        first, f, g = self.groups[k]
        value = self._group_column(int(f), int(g))[int(i - first)].as_py()
        if self.image_kind == "struct":
            value = (value or {}).get("bytes") or (value or {}).get("path")
        if value is None:
            raise ValueError("no image in this row")
        return value

    def image(self, i: int) -> np.ndarray:
        from PIL import Image

        value = self._encoded(int(i))
        if isinstance(value, str):
            path = Path(value) if Path(value).is_absolute() else self.root / value
            with Image.open(path) as img:
                return to_rgb_uint8(img)
        with Image.open(io.BytesIO(value)) as img:
            return to_rgb_uint8(img)

    def _load(self, rows):
        return np.stack([resize_square(self.image(int(i)), self.image_size) for i in rows])


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
        if files:
            return files
        raise SourceError(f"{path} holds no .parquet files: parquet: needs a catalogue file or a folder of them")
    raise SourceError(f"{path} not found: parquet: needs a catalogue file or a folder of parquet files")


def _pick(names: list[str], wanted: str | None, defaults, what: str, where: str) -> str | None:
    if wanted:
        if wanted not in names:
            raise SourceError(f"{where} has no column {wanted!r} for {what}: columns are {', '.join(names)}")
        return wanted
    return next((c for c in defaults if c in names), None)


def open_catalogue(ref: str, path: Path, image: str | None = None, label: str | None = None, id: str | None = None,
                   split: str | None = None, class_names: str | None = None, image_size: int | str = 256,
                   ra: str | None = None, dec: str | None = None, **_) -> CatalogueDataset:
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    files = _files(Path(path))
    where = str(path)
    try:
        data = pads.dataset([str(f) for f in files], format="parquet")
    except Exception as e:
        raise SourceError(f"{where} is not a readable parquet catalogue ({type(e).__name__}: {e})") from None
    names = data.schema.names
    image_col = _pick(names, image, IMAGE_COLUMNS, "the images", where)
    if image_col is None:
        raise SourceError(f"{where} has no image column ({', '.join(IMAGE_COLUMNS)}): name it with ?image=COLUMN")
    itype = data.schema.field(image_col).type
    if pa.types.is_string(itype) or pa.types.is_large_string(itype):
        kind = "path"
    elif pa.types.is_binary(itype) or pa.types.is_large_binary(itype):
        kind = "bytes"
    elif pa.types.is_struct(itype) and "bytes" in [itype.field(i).name for i in range(itype.num_fields)]:
        kind = "struct"
    else:
        raise SourceError(f"image column {image_col!r} of {where} is {itype}: expected paths, bytes or {{bytes, path}}")
    label_col = _pick(names, label, ("label",), "the labels", where)
    id_col = _pick(names, id, ID_COLUMNS, "the ids", where)
    split_col = _pick(names, split, ("split",), "the split", where)
    table = data.to_table(columns=[c for c in names if c != image_col or kind == "path"]).to_pandas()
    n = len(table)
    if n == 0:
        raise SourceError(f"{where} lists no galaxies")
    labels = (table[label_col].fillna(-1).astype(np.int64).to_numpy() if label_col else np.full(n, -1, np.int64))
    if id_col:
        ids = table[id_col].astype(str).to_numpy()
    elif kind == "path":
        ids = table[image_col].astype(str).to_numpy()
    else:
        ids = np.array([f"row-{i}" for i in range(n)])
    splits = table[split_col].astype(str).to_numpy() if split_col else np.full(n, "test")
    meta = table.drop(columns=[c for c in (label_col, split_col) if c])  # a path column stays, as folder: keeps file
    meta = map_columns(meta, ra, dec, where=where)
    top = int(labels.max()) if (labels >= 0).any() else -1
    if class_names:
        names_ = [s.strip() for s in class_names.split(",")]
        if len(names_) <= top:
            raise SourceError(f"class_names lists {len(names_)} names but labels go up to {top}")
    else:
        names_ = list(GALAXY10_CLASSES) if top < len(GALAXY10_CLASSES) else [f"class {k}" for k in range(top + 1)]

    groups, first, h = [], 0, hashlib.sha256(f"{image_col}:{kind}".encode())
    for fi, f in enumerate(files):
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
        md = pq.read_metadata(f)
        for g in range(md.num_row_groups):
            groups.append((first, fi, g))
            first += md.row_group(g).num_rows
    ds = CatalogueDataset(source=ref, class_names=names_, ids=ids, labels=labels, splits=splits, metadata=meta,
                          image_size=int(image_size), content_key="parquet:" + h.hexdigest())
    ds.files, ds.image_column, ds.image_kind = files, image_col, kind
    ds.root = files[0].parent if Path(path).is_file() else Path(path)
    ds.paths = table[image_col].astype(str).to_numpy() if kind == "path" else None
    ds.groups = np.asarray(groups, dtype=np.int64).reshape(-1, 3)
    return ds
