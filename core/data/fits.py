"""`fits:DIR`: multi-band FITS cutouts (e.g. Legacy Survey g, r, z) -> RGB galaxies.

A galaxy is either one cube (3 planes, as the Legacy Survey cutout service writes
them, bands named by ``BAND0..2`` header keys) or one 2-D file per band named
``NAME_g.fits``, ``NAME_r.fits``, ``NAME_z.fits`` (band from the ``BAND`` or
``FILTER`` header key, else the suffix). Fluxes become RGB by one of:

- ``rgb=legacy`` (default): the Legacy Surveys viewer's asinh scheme
  (legacypipe's ``sdss_rgb``): per-band scales g 6.0, r 3.4, z 2.2 (i 3.0),
  softening ``m=0.03``, ``Q=20``; g -> blue, r -> green, z -> red.
- ``rgb=lupton``: ``astropy.visualization.make_lupton_rgb`` with ``stretch=0.5``,
  ``Q=8``, ``minimum=0`` (z, r, g as red, green, blue).

NaN pixels (masked, off the survey edge) count as zero flux; negative flux is
clipped to black by both schemes. The recipe is part of the dataset reference
(``fits:DIR?rgb=legacy&Q=20&m=0.03``, filled in with defaults), so it is recorded
in every features run's provenance and fingerprint. Sky positions come from the
header's celestial WCS at the image centre (``ra``, ``dec``, ``pxscale`` in
arcsec per pixel); an optional ``labels.csv`` (``file,label[,...]``) adds labels
and metadata (its own ``ra``/``dec`` columns win, or name them: ``?ra=COL&dec=COL``).
"""
from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.base import MAX_SIDE, Dataset, SourceError, resize_square

SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fits.fz")
LEGACY_SCALES = {"g": (2, 6.0), "r": (1, 3.4), "i": (0, 3.0), "z": (0, 2.2)}  # band -> (RGB plane, scale)
DEFAULTS = {"legacy": {"Q": 20.0, "m": 0.03}, "lupton": {"stretch": 0.5, "Q": 8.0, "minimum": 0.0}}
_BAND_FILE = re.compile(r"^(?P<name>.+)[_-](?P<band>[a-zA-Z])$")


def legacy_rgb(planes: np.ndarray, bands, Q: float = 20.0, m: float = 0.03) -> np.ndarray:
    """float (3, H, W) fluxes of ``bands`` -> uint8 (H, W, 3), the Legacy Surveys asinh scheme."""
    planes = np.nan_to_num(np.asarray(planes, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    scaled = [(LEGACY_SCALES[b][0], p * LEGACY_SCALES[b][1] + m) for p, b in zip(planes, bands)]
    intensity = sum(np.maximum(0, s) for _, s in scaled) / len(scaled)
    stretch = np.arcsinh(Q * intensity) / np.sqrt(Q)
    intensity = np.where(intensity == 0, 1e-6, intensity)
    rgb = np.zeros(planes.shape[1:] + (3,), np.float64)
    for plane, s in scaled:
        rgb[..., plane] = np.clip(s * stretch / intensity, 0, 1)
    return np.round(rgb * 255).astype(np.uint8)


def lupton_rgb(planes: np.ndarray, bands, stretch: float = 0.5, Q: float = 8.0, minimum: float = 0.0) -> np.ndarray:
    """float (3, H, W) fluxes -> uint8 (H, W, 3) by astropy's make_lupton_rgb (reddest band red)."""
    from astropy.visualization import make_lupton_rgb

    planes = np.nan_to_num(np.asarray(planes, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    order = np.argsort([LEGACY_SCALES.get(b, (1, 0))[0] for b in bands], kind="stable")  # red plane first
    red, green, blue = (planes[i] for i in order)
    with np.errstate(invalid="ignore", divide="ignore"):  # zero-intensity pixels: astropy maps them to black
        return make_lupton_rgb(red, green, blue, minimum=minimum, stretch=stretch, Q=Q)


def shrink_planes(planes: np.ndarray) -> np.ndarray:
    """(3, H, W) fluxes as a model is fed them: unchanged up to ``MAX_SIDE`` pixels on the longer
    side, else block-averaged by the smallest integer factor that fits (as ``base.decode_image``
    shrinks a large PNG), in float32, before the colour scheme's float64 arrays are made."""
    h, w = planes.shape[-2:]
    f = -(-max(h, w) // MAX_SIDE)
    if f <= 1:
        return planes
    h2, w2 = h // f, w // f
    out = np.empty(planes.shape[:-2] + (h2, w2), np.float32)
    for i, p in enumerate(planes):  # plane by plane: no float64 copy of the full cube
        out[i] = np.nan_to_num(np.asarray(p[: h2 * f, : w2 * f], np.float32), nan=0.0, posinf=0.0,
                               neginf=0.0).reshape(h2, f, w2, f).mean((1, 3))
    return out


class FitsDataset(Dataset):
    galaxies: list  # [(files, bands)] aligned with rows
    recipe: dict

    def image(self, i: int) -> np.ndarray:
        files, bands = self.galaxies[int(i)]
        planes = shrink_planes(_read_planes(files))
        params = {k: v for k, v in self.recipe.items() if k != "rgb"}
        convert = legacy_rgb if self.recipe["rgb"] == "legacy" else lupton_rgb
        return convert(planes, bands, **params)

    def _load(self, rows):
        return np.stack([resize_square(self.image(int(i)), self.image_size) for i in rows])


def _read_planes(files) -> np.ndarray:
    from astropy.io import fits

    if len(files) == 1:
        with fits.open(files[0], memmap=False) as hdul:
            return np.asarray(_image_hdu(hdul).data, np.float64)
    planes = []
    for f in files:
        with fits.open(f, memmap=False) as hdul:
            planes.append(np.asarray(_image_hdu(hdul).data, np.float64))
    if len({p.shape for p in planes}) != 1:
        raise SourceError(f"band images of {Path(files[0]).name} differ in size: {[p.shape for p in planes]}")
    return np.stack(planes)


def _image_hdu(hdul):
    for hdu in hdul:
        if getattr(hdu, "data", None) is not None and hdu.data.ndim >= 2:
            return hdu
    raise ValueError("no image data")


def _centre(header, shape) -> tuple[float, float, float]:
    """(ra, dec, arcsec per pixel) at the image centre from the header's celestial WCS, NaNs without one."""
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header).celestial
        if not wcs.has_celestial or wcs.naxis != 2:
            return np.nan, np.nan, np.nan
        h, w = shape[-2:]
        ra, dec = wcs.all_pix2world([[(w - 1) / 2, (h - 1) / 2]], 0)[0]
        scale = float(np.mean(proj_plane_pixel_scales(wcs)) * 3600)
        return float(ra) % 360, float(dec), scale
    except Exception:
        return np.nan, np.nan, np.nan


def _describe(path: Path, bands_option: list[str]) -> dict:
    """What one FITS file holds: {kind: cube|band, bands, band, shape, ra, dec, pxscale}, or raises."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        hdu = _image_hdu(hdul)
        header, shape = hdu.header, hdu.data.shape
    info = dict(zip(("ra", "dec", "pxscale"), _centre(header, shape)), shape=shape[-2:])
    if len(shape) == 3:
        if shape[0] != 3:
            raise ValueError(f"a cube of {shape[0]} planes (3 needed: g, r, z)")
        bands = [str(header.get(f"BAND{i}", "")).strip().lower() or bands_option[i] for i in range(3)]
        return {**info, "kind": "cube", "bands": bands}
    if len(shape) == 2:
        band = str(header.get("BAND", header.get("FILTER", ""))).strip().lower()[:1]
        return {**info, "kind": "band", "band": band}
    raise ValueError(f"image of shape {shape}")


def _stem(path: Path) -> str:
    name = path.name
    for s in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def _galaxies(root: Path, bands_option: list[str]):
    """[(id, files, bands, info)] and skipped [{file, reason}] for every FITS file in root."""
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
    out, skipped, by_name = [], [], {}
    for f in files:
        try:
            info = _describe(f, bands_option)
        except Exception as e:  # astropy raises many types for broken files
            skipped.append({"file": f.name, "reason": f"unreadable ({type(e).__name__}: {str(e)[:80]})"})
            continue
        if info["kind"] == "cube":
            unknown = [b for b in info["bands"] if b not in LEGACY_SCALES]
            if unknown:
                skipped.append({"file": f.name, "reason": f"unknown band(s) {unknown}: name them with ?bands=g,r,z"})
                continue
            out.append((_stem(f), [f], info["bands"], info))
            continue
        m = _BAND_FILE.match(_stem(f))
        band = info["band"] or (m.group("band").lower() if m else "")
        name = m.group("name") if m else _stem(f)
        by_name.setdefault(name, {})[band] = (f, info)
    for name, per_band in sorted(by_name.items()):
        have = [b for b in bands_option if b in per_band]
        if len(have) < 3:
            for f, _ in per_band.values():
                skipped.append({"file": f.name, "reason": f"band files for {name} lack "
                                + ", ".join(b for b in bands_option if b not in per_band)})
            continue
        info = per_band[have[0]][1]
        if len({per_band[b][1]["shape"] for b in have}) != 1:
            skipped.append({"file": name, "reason": "band images differ in size"})
            continue
        out.append((name, [per_band[b][0] for b in have], have, info))
    return out, skipped


def _recipe(options: dict) -> dict:
    rgb = str(options.get("rgb", "legacy")).lower()
    if rgb not in DEFAULTS:
        raise SourceError(f"unknown rgb={rgb!r} for fits: use rgb=legacy (Legacy Surveys asinh) or rgb=lupton")
    recipe = {"rgb": rgb}
    for k, default in DEFAULTS[rgb].items():
        try:
            recipe[k] = float(options.get(k, default))
        except ValueError:
            raise SourceError(f"fits option {k}={options[k]!r} is not a number") from None
    return recipe


def open_fits(ref: str, root: Path, image_size: int | str = 256, bands: str = "g,r,z", ra: str | None = None,
              dec: str | None = None, class_names: str | None = None, **options):
    from core.data import sky

    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"folder {root} does not exist: point fits: at a directory of FITS cutouts")
    bands_option = [b.strip().lower() for b in bands.split(",")]
    if len(bands_option) != 3 or any(b not in LEGACY_SCALES for b in bands_option):
        raise SourceError(f"bands={bands!r}: name three of g, r, i, z in plane order, e.g. bands=g,r,z")
    recipe = _recipe(options)
    found, skipped = _galaxies(root, bands_option)
    if not found:
        raise SourceError(f"no usable FITS cutouts in {root} ({len(skipped)} skipped"
                          + (f", e.g. {skipped[0]['file']}: {skipped[0]['reason']}" if skipped else "") + ")")
    header = {k: [g[3][k] for g in found] for k in ("ra", "dec", "pxscale")}
    meta = pd.DataFrame({"file": [g[0] for g in found], **header,
                         "bands": ["".join(g[2]) for g in found]})
    labels = np.full(len(found), -1, np.int64)
    splits = np.full(len(found), "test")
    names: list[str] = []
    csv = root / "labels.csv"
    if csv.is_file():
        meta, labels, splits, names = _join_labels(csv, meta, class_names)
    meta = sky.map_columns(meta, ra, dec, where=str(csv if ra else root))
    if "ra" in meta:
        meta = meta[["file", "ra", "dec"] + [c for c in meta.columns if c not in ("file", "ra", "dec")]]

    h = hashlib.sha256(repr(sorted(recipe.items())).encode())
    for _, files, _, _ in found:
        for f in files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    if csv.is_file():
        h.update(csv.read_bytes())
    canonical = ref.split("?", 1)[0] + "?" + "&".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in recipe.items())
    ds = FitsDataset(source=canonical, class_names=names, ids=meta["file"].astype(str).to_numpy(), labels=labels,
                     splits=splits, metadata=meta.reset_index(drop=True), image_size=int(image_size),
                     skipped=skipped, content_key="fits:" + h.hexdigest())
    ds.galaxies = [(g[1], g[2]) for g in found]
    ds.recipe = recipe
    return ds


def _join_labels(csv: Path, meta: pd.DataFrame, class_names: str | None):
    """Labels, splits and extra metadata from labels.csv, matched on ``file`` (the cube's
    file name or the galaxy's name without band suffix)."""
    from core.data.folder import class_names_of

    table = pd.read_csv(csv)
    if "file" not in table.columns:
        raise SourceError(f"{csv} has no 'file' column: expected columns file,label[,...]")
    table["file"] = [_stem(Path(str(f))) for f in table["file"]]
    table = table.drop_duplicates("file").set_index("file")
    extra = table.drop(columns=[c for c in ("label", "split") if c in table.columns])
    merged = meta.set_index("file")
    for c in extra.columns:  # the catalogue's own values win over the header's
        merged[c] = extra[c].reindex(merged.index)
    raw = pd.to_numeric(table["label"], errors="coerce") if "label" in table.columns else pd.Series(dtype=float)
    labels = raw.reindex(merged.index).fillna(-1).astype(np.int64).to_numpy()
    splits = (table["split"].reindex(merged.index).fillna("test").astype(str).to_numpy() if "split" in table.columns
              else np.full(len(merged), "test"))
    names = class_names_of(table.reset_index(), labels, class_names)
    return merged.reset_index(), labels, splits, names
