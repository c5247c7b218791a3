"""One self-contained HTML file of a map: what you attach to an email or put in a paper's supplement.

The file opens from ``file://`` in Chromium or Firefox with no network and no server: its map is drawn
with WebGL from binary columns embedded in the page (gzip + base64, unpacked by the browser's own
``DecompressionStream``), with the class legend and highlighting, hover (id, class, prediction,
confidence, RA/Dec, thumbnail), a confusion matrix whose cells ring their galaxies, the rings the user
chose (a confusion cell or a selection), and a title and a note. No CDN, no external font, nothing of
the cache's paths: dataset and checkpoint references are reduced to their last path component.

The payload (before gzip)::

    uint32 header length | header JSON (padded to 4 bytes) | x float32[n] | y float32[n]
    | [ra float32[n] | dec float32[n]] | [thumbnail slot int32[n]] | class uint8[n] | pred uint8[n]
    | confidence uint8[n] | ids (utf-8, one per line)

(classes as index + 1, 0 = none; confidence round(250 c), 255 = none). Thumbnails are AVIF (else WebP) sprite
sheets of ``THUMB_PX`` px cells, one data URI each: every galaxy while they fit ``thumb_budget_mb``,
a random sample beyond it (slot -1 = none).
"""
from __future__ import annotations

import base64
import gzip
import html
import io
import json
import re
import struct
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core.analysis.palette import class_colour
from core.errors import UserError
from core.store import cache as store

ASSETS = Path(__file__).with_name("export_assets")
THUMB_PX = 64
SHEET_SIDE = 32  # thumbnails per sheet side: 2,048 px sheets of 1,024 galaxies
NO_VALUE = 255


def _qualities() -> list[tuple[str, int]]:
    """Sprite encodings, best first: AVIF where Pillow writes it (a 64 px galaxy in ~0.4 KB at quality 55, against
    ~0.75 KB for WebP and ~0.55 KB for JPEG at 60), else WebP."""
    from PIL import features

    if features.check("avif"):
        return [("AVIF", 60), ("AVIF", 50), ("AVIF", 40), ("AVIF", 30)]
    return [("WEBP", 60), ("WEBP", 45), ("WEBP", 35), ("WEBP", 25)]


QUALITIES = _qualities()


def public_ref(ref: str | None) -> str:
    """A reference with local paths reduced to their last component (``folder:/home/me/data`` ->
    ``folder:data``): the export must not tell where the user's files are."""
    if not ref:
        return ""
    prefix, _, body = str(ref).partition(":")
    query = ""
    if "?" in body:
        body, query = body.split("?", 1)
        query = "&".join(p for p in query.split("&") if "/" not in p)
    if "/" in body and (body.startswith(("/", "~", ".")) or prefix in ("folder", "h5", "dir", "fits", "parquet")):
        body = Path(body.rstrip("/")).name
    return f"{prefix}:{body}" + (f"?{query}" if query else "")


def _run(features_key: str, cache) -> dict:
    runs = [r for r in store.list_runs(cache) if r["kind"] == "features" and r["key"] == features_key]
    if not runs:
        raise UserError(f"no features run {features_key!r} in {store.cache_dir(cache)}: see `python -m core ls`")
    return runs[0]


def _projection(features_key: str, cache, method: str, map_key: str | None) -> dict:
    maps = [r for r in store.list_runs(cache) if r["kind"] == "projection" and r.get("features_run") == features_key]
    if map_key:
        maps = [r for r in maps if r["key"] == map_key]
    else:
        maps = [r for r in maps if r.get("method") == method]
        maps.sort(key=lambda r: r.get("aligned_to") is not None)  # the run's own map first
    if not maps:
        raise UserError(f"no {method} map of run {features_key} is cached: "
                        f"`python -m core project --run {features_key} --method {method}` makes one")
    return maps[0]


def _columns(run: dict, projection: dict):
    import pyarrow.parquet as pq

    names = store.read_schema(run["path"]).names
    cols = [c for c in ("row", "id", "split", "label", "pred", "confidence", "meta_ra", "meta_dec") if c in names]
    table = store.read_table(run["path"], columns=cols)
    if table is None:
        raise UserError(f"features file of run {run['key']} is unreadable: extract it again")
    f = table.to_pandas()
    proj = pq.read_table(projection["path"], columns=["row", "x", "y"]).to_pandas()
    pos = pd_index(f["row"]).get_indexer(proj["row"].to_numpy())
    x = np.full(len(f), np.nan, np.float32)
    y = np.full(len(f), np.nan, np.float32)
    ok = pos >= 0
    x[pos[ok]] = proj["x"].to_numpy(np.float32)[ok]
    y[pos[ok]] = proj["y"].to_numpy(np.float32)[ok]
    return f, x, y


def pd_index(values):
    import pandas as pd

    return pd.Index(np.asarray(values))


def _codes(values, k: int) -> np.ndarray:
    v = np.asarray(values, np.int64)
    return np.where((v >= 0) & (v < k), v + 1, 0).astype(np.uint8)


def _thumbnails(dataset_ref: str, rows: np.ndarray, budget_bytes: int, quality: int, seed: int, progress):
    """(slot per galaxy int32, sheets as data URIs). Renders a sample first to size the budget."""
    from PIL import Image

    from core.data.sources import open_dataset

    n = len(rows)
    slots = np.full(n, -1, np.int32)
    if budget_bytes <= 0 or n == 0:
        return slots, []
    try:
        ds = open_dataset(dataset_ref)
    except Exception as e:  # no images (a rehearsal run, a moved folder): the export still works without
        if progress:
            progress(f"no thumbnails: the dataset could not be opened ({str(e).splitlines()[0]})")
        return slots, []
    per_sheet = SHEET_SIDE * SHEET_SIDE

    def sheet(indices, fmt: str, quality: int) -> tuple[bytes, int]:
        side = int(np.ceil(np.sqrt(len(indices))))
        img = Image.new("RGB", (side * THUMB_PX, side * THUMB_PX))
        for j, i in enumerate(indices):
            im = Image.fromarray(np.asarray(ds.image(int(rows[i])), np.uint8)).convert("RGB")
            if im.size != (THUMB_PX, THUMB_PX):
                im = im.resize((THUMB_PX, THUMB_PX), Image.BILINEAR)
            img.paste(im, ((j % side) * THUMB_PX, (j // side) * THUMB_PX))
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=quality, **({"speed": 8} if fmt == "AVIF" else {"method": 4}))
        return buf.getvalue(), side

    # the best quality whose thumbnails all fit the budget, measured on a sample sheet; else a sample of galaxies
    rng = np.random.default_rng(seed)
    probe = rng.permutation(n)[: min(n, 256)]
    for fmt, q in QUALITIES:
        per_thumb = len(sheet(probe, fmt, q)[0]) / len(probe) * 4 / 3  # base64
        if per_thumb * n <= budget_bytes:
            break
    fit = int(budget_bytes // max(per_thumb, 1.0))
    chosen = np.arange(n) if fit >= n else np.sort(rng.permutation(n)[:fit])
    sheets = []
    for s in range(0, len(chosen), per_sheet):
        part = chosen[s:s + per_sheet]
        data, side = sheet(part, fmt, q)
        sheets.append({"side": side, "uri": f"data:image/{fmt.lower()};base64," + base64.b64encode(data).decode()})
        slots[part] = s + np.arange(len(part))
        if progress:
            progress(f"thumbnails {min(s + per_sheet, len(chosen)):,} of {len(chosen):,}")
    return slots, sheets


def build_html(features_key: str, cache=None, method: str = "tsne", map_key: str | None = None,
               title: str | None = None, note: str = "", highlight=(), cell: tuple[str, str] | None = None,
               ring_ids=None, thumbnails: bool = True, thumb_budget_mb: float = 11.0, thumb_quality: int = 60,
               seed: int = 0, progress=None) -> tuple[str, dict]:
    """The HTML text of one run's map and what went into it (galaxies, thumbnails, bytes per part).

    ``highlight``: class names drawn in colour (the rest grey); ``cell``: (true class, predicted class)
    whose galaxies are ringed; ``ring_ids``: galaxy ids to ring instead (a selection)."""
    t0 = time.perf_counter()
    run = _run(features_key, cache)
    projection = _projection(features_key, cache, method, map_key)
    names = list(run.get("class_names") or [])
    f, x, y = _columns(run, projection)
    n, k = len(f), len(names)
    if k > 254:
        raise UserError(f"the export shows at most 254 classes; this run has {k}")
    unknown = [c for c in highlight if c not in names] + [c for c in (cell or ()) if c not in names]
    if unknown:
        raise UserError(f"unknown class {unknown[0]!r}: the classes are " + ", ".join(names))
    has_pred = bool(run.get("has_head")) and "pred" in f
    label = f["label"].to_numpy(np.int64)
    pred = f["pred"].to_numpy(np.int64) if has_pred else np.full(n, -1)
    conf = f["confidence"].to_numpy(np.float32) if has_pred else np.full(n, np.nan, np.float32)
    conf8 = np.where(np.isfinite(conf), np.rint(np.clip(conf, 0, 1) * 250), NO_VALUE).astype(np.uint8)
    has_sky = "meta_ra" in f and "meta_dec" in f and bool(np.isfinite(f["meta_ra"].to_numpy(np.float64)).any())
    slots, sheets = (_thumbnails(run["dataset"], f["row"].to_numpy(np.int64), int(thumb_budget_mb * 2 ** 20),
                                 thumb_quality, seed, progress) if thumbnails else (np.full(n, -1, np.int32), []))
    rings, ring_label = [], ""
    if cell:
        t, p = names.index(cell[0]), names.index(cell[1])
        rings = np.flatnonzero((label == t) & (pred == p)).tolist()
        ring_label = f"{cell[0]} predicted as {cell[1]}"
    elif ring_ids is not None and len(ring_ids):
        rings = pd_index(f["id"].astype(str)).get_indexer([str(i) for i in ring_ids])
        rings = [int(i) for i in rings if i >= 0]
        ring_label = f"selection of {len(rings):,} galaxies"
    confusion = None
    if has_pred:
        ok = (label >= 0) & (label < k) & (pred >= 0) & (pred < k)
        cm = np.zeros((k, k), np.int64)
        np.add.at(cm, (label[ok], pred[ok]), 1)
        confusion = cm.tolist()
    header = {
        "n": n, "classes": names, "colours": [class_colour(i) for i in range(k)],
        "title": title or f"{public_ref(run.get('model'))} · {method}", "note": note or "",
        "dataset": public_ref(run.get("dataset")), "model": public_ref(run.get("model")), "mode": run.get("mode"),
        "method": projection.get("method"), "has_pred": has_pred, "has_sky": has_sky,
        "thumbs": {"px": THUMB_PX, "count": int((slots >= 0).sum()), "per_sheet": SHEET_SIDE ** 2,
                   "sides": [s["side"] for s in sheets]},
        "highlight": [names.index(c) for c in highlight], "rings": rings, "ring_label": ring_label,
        "confusion": confusion, "quality": projection.get("quality"),
        "exported": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 4)
    parts = [struct.pack("<I", len(head)), head, x.tobytes(), y.tobytes()]
    if has_sky:
        parts += [f["meta_ra"].to_numpy(np.float32).tobytes(), f["meta_dec"].to_numpy(np.float32).tobytes()]
    if sheets:
        parts.append(slots.astype("<i4").tobytes())
    parts += [_codes(label, k).tobytes(), _codes(pred, k).tobytes(), conf8.tobytes(),
              "\n".join(f["id"].astype(str)).encode()]
    payload = base64.b64encode(gzip.compress(b"".join(parts), compresslevel=6, mtime=0)).decode()
    template = (ASSETS / "map.html").read_text()
    script = (ASSETS / "map.js").read_text()
    sheet_tags = "\n".join(f'<img class="sheet" id="sheet{i}" alt="" src="{s["uri"]}">' for i, s in enumerate(sheets))
    page = (template.replace("{{TITLE}}", html.escape(header["title"]))
            .replace("{{SHEETS}}", sheet_tags)
            .replace("{{PAYLOAD}}", payload)
            .replace("{{SCRIPT}}", script))
    stats = {"galaxies": n, "thumbnails": int((slots >= 0).sum()), "sheets": len(sheets),
             "payload_bytes": len(payload), "thumbnail_bytes": sum(len(s["uri"]) for s in sheets),
             "bytes": len(page.encode()), "seconds": round(time.perf_counter() - t0, 2)}
    return page, stats


def write_html(out, features_key: str, **kwargs) -> dict:
    """Write the export atomically to ``out`` (a .html path); returns ``build_html``'s stats + path."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"{out} should end in .html")
    page, stats = build_html(features_key, **kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    with store.atomic_path(out) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return {**stats, "path": str(out)}


def leaks(page: str, *secrets: str) -> list[str]:
    """Which of ``secrets`` (paths, user names...) appear in an exported page."""
    return [s for s in secrets if s and re.search(re.escape(s), page)]
