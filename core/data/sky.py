"""Sky positions: parsing what a user types, validating catalogue columns, finding
the nearest catalogue galaxy, and links to the survey viewer and SIMBAD.

Coordinates are ICRS degrees throughout: RA in [0, 360), Dec in [-90, 90].
Parsing and formatting go through astropy; the cone match is plain numpy (the
haversine formula), so matching against a million galaxies takes milliseconds.
"""
from __future__ import annotations

import re
from urllib.parse import urlencode

import numpy as np
import pandas as pd

from core.data.base import SourceError

LEGACY_VIEWER = "https://www.legacysurvey.org/viewer"
SIMBAD_CONE = "https://simbad.cds.unistra.fr/simbad/sim-coo"
DEFAULT_LAYER = "ls-dr10"
MATCH_WARNING_ARCSEC = 20.0  # beyond this the nearest galaxy is probably not the one meant
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class CoordinateError(SourceError):
    """A position or coordinate column that is not a valid sky position; says what is accepted
    (a SourceError, so the CLI prints it as one line and exits 2)."""


def parse_position(text: str) -> tuple[float, float]:
    """``"150.1196 2.2058"`` (degrees), ``"10:00:28.7 +02:12:21"`` or
    ``"10h00m28.7s +2d12m21s"`` (sexagesimal: RA in hours, Dec in degrees) ->
    (ra, dec) in degrees. Commas may separate the two. Raises CoordinateError."""
    parts = [p for p in re.split(r"[\s,]+", str(text).strip()) if p]
    if len(parts) == 6 and all(_NUMBER.match(p) for p in parts):  # "10 00 28.7 +02 12 21"
        parts = [":".join(parts[:3]), ":".join(parts[3:])]
    if len(parts) != 2:
        raise CoordinateError(
            f"cannot read {text!r} as a sky position: type RA and Dec, e.g. '150.1196 2.2058' (degrees) "
            "or '10:00:28.7 +02:12:21' (RA in hours)")
    if all(_NUMBER.match(p) for p in parts):
        ra, dec = float(parts[0]), float(parts[1])
    else:
        from astropy import units as u
        from astropy.coordinates import Angle

        try:
            ra_unit = u.deg if _NUMBER.match(parts[0]) or "d" in parts[0].lower() else u.hourangle
            ra = float(Angle(parts[0], unit=ra_unit).deg)
            dec = float(Angle(parts[1], unit=u.deg).deg)
        except Exception:
            raise CoordinateError(
                f"cannot read {text!r} as a sky position: sexagesimal RA is hours (10:00:28.7 or 10h00m28.7s), "
                "Dec degrees (+02:12:21 or +2d12m21s)") from None
    check_position(ra, dec)
    return ra, dec


def check_position(ra: float, dec: float) -> None:
    if not np.isfinite(ra) or not 0 <= ra < 360:
        raise CoordinateError(f"RA {ra:g} is outside [0, 360) degrees")
    if not np.isfinite(dec) or not -90 <= dec <= 90:
        raise CoordinateError(f"Dec {dec:g} is outside [-90, 90] degrees")


def check_columns(ra, dec, where: str = "") -> None:
    """Raise CoordinateError naming the first bad row when RA/Dec arrays leave their
    ranges (NaN = position unknown, allowed)."""
    ra, dec = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
    bad_ra = np.flatnonzero(~np.isnan(ra) & ((ra < 0) | (ra >= 360) | ~np.isfinite(ra)))
    bad_dec = np.flatnonzero(~np.isnan(dec) & ((dec < -90) | (dec > 90) | ~np.isfinite(dec)))
    at = f" in {where}" if where else ""
    if len(bad_ra):
        raise CoordinateError(f"{len(bad_ra)} RA value(s){at} outside [0, 360) degrees, first at row "
                              f"{bad_ra[0]}: {ra[bad_ra[0]]:g}; RA must be in degrees, not hours or radians")
    if len(bad_dec):
        raise CoordinateError(f"{len(bad_dec)} Dec value(s){at} outside [-90, 90] degrees, first at row "
                              f"{bad_dec[0]}: {dec[bad_dec[0]]:g}")


def map_columns(meta: pd.DataFrame, ra: str | None = None, dec: str | None = None, where: str = "") -> pd.DataFrame:
    """Metadata with the source's coordinate columns renamed to ``ra``/``dec`` and validated.

    ``ra``/``dec`` name the columns explicitly (``folder:DIR?ra=RA_DEG&dec=DEC_DEG``);
    without them, columns already called ``ra`` and ``dec`` are used; otherwise the
    dataset simply has no positions. Raises CoordinateError for a named column that
    is missing or holds values outside the sky.
    """
    if bool(ra) != bool(dec):
        raise CoordinateError("name both coordinate columns (ra=COLUMN&dec=COLUMN), not one")
    if ra:
        missing = [c for c in (ra, dec) if c not in meta.columns]
        if missing:
            at = f" in {where}" if where else ""
            raise CoordinateError(f"coordinate column(s) {', '.join(missing)} not found{at}"
                                  f"; columns: {', '.join(map(str, meta.columns))}")
        meta = meta.drop(columns=[c for c in ("ra", "dec") if c in meta.columns and c not in (ra, dec)])
        meta = meta.rename(columns={ra: "ra", dec: "dec"})
    if "ra" in meta.columns and "dec" in meta.columns:
        meta = meta.copy()
        for c in ("ra", "dec"):
            meta[c] = pd.to_numeric(meta[c], errors="coerce").astype(np.float64)
        check_columns(meta["ra"], meta["dec"], where)
    return meta


def separation_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation in arcsec (haversine: accurate at arcsec scales and below)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(a, np.float64)) for a in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))) * 3600


def nearest(ra_cat, dec_cat, ra: float, dec: float, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The k catalogue positions nearest to (ra, dec): (positions (k,), separations in arcsec (k,)),
    nearest first. Rows with unknown (NaN) positions never match."""
    sep = separation_arcsec(ra_cat, dec_cat, ra, dec)
    sep = np.where(np.isnan(sep), np.inf, sep)
    k = min(int(k), int(np.isfinite(sep).sum()))
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    idx = np.argpartition(sep, k - 1)[:k]
    idx = idx[np.argsort(sep[idx], kind="stable")]
    return idx.astype(np.int64), sep[idx]


def sexagesimal(ra, dec, precision: int = 1) -> np.ndarray:
    """"10h00m28.70s +02d12m20.9s"-style strings (RA hours, Dec degrees; RA one decimal
    more, as the two are then about equally precise), one per position, "" where unknown.
    Vectorised: 17,736 positions in a few ms (astropy's Angle.to_string takes ~0.8 s)."""
    ra, dec = np.atleast_1d(np.asarray(ra, np.float64)), np.atleast_1d(np.asarray(dec, np.float64))
    ok = np.isfinite(ra) & np.isfinite(dec)
    ra_s = _fields(np.where(ok, ra, 0) / 15, precision + 1, wrap=24)
    sign = np.where(np.where(ok, dec, 0) < 0, "-", "+")
    dec_s = _fields(np.abs(np.where(ok, dec, 0)), precision)
    ra_w, dec_w = precision + 4, precision + 3  # seconds field widths (zero-padded)
    out = [f"{h:02d}h{m:02d}m{s:0{ra_w}.{precision + 1}f}s {g}{d:02d}d{dm:02d}m{ds:0{dec_w}.{precision}f}s"
           if good else "" for good, (h, m, s), g, (d, dm, ds) in zip(ok, zip(*ra_s), sign, zip(*dec_s))]
    return np.asarray(out, dtype=str)


def _fields(value, decimals: int, wrap: int | None = None):
    """(units, minutes, seconds) of a non-negative value in units (hours or degrees), the
    seconds rounded first so that 59.996 s carries into the minute instead of printing 60.00."""
    total = np.round(np.asarray(value) * 3600, decimals)
    if wrap:  # 23h59m59.999s rounds to 24h: that is 00h
        total = np.where(total >= wrap * 3600, total - wrap * 3600, total)
    units = (total // 3600).astype(np.int64)
    rest = total - units * 3600
    minutes = (rest // 60).astype(np.int64)
    seconds = np.abs(rest - minutes * 60)
    return units.tolist(), minutes.tolist(), seconds.tolist()


def legacy_viewer_url(ra: float, dec: float, layer: str = DEFAULT_LAYER, zoom: int = 14) -> str:
    """The Legacy Surveys sky viewer centred on a position."""
    return f"{LEGACY_VIEWER}?" + urlencode({"ra": f"{ra:.5f}", "dec": f"{dec:.5f}", "layer": layer, "zoom": zoom})


def simbad_url(ra: float, dec: float, radius_arcsec: float = 10) -> str:
    """A SIMBAD cone search around a position (ICRS)."""
    return f"{SIMBAD_CONE}?" + urlencode({"Coord": f"{ra:.5f} {dec:+.5f}", "CooFrame": "ICRS", "CooEpoch": 2000,
                                          "CooEqui": 2000, "Radius": radius_arcsec, "Radius.unit": "arcsec",
                                          "submit": "submit query"})


def has_positions(frame: pd.DataFrame, prefix: str = "meta_") -> bool:
    """Whether a frame carries sky positions (``meta_ra``/``meta_dec`` with at least one value)."""
    ra, dec = f"{prefix}ra", f"{prefix}dec"
    return ra in frame.columns and dec in frame.columns and bool(
        (pd.to_numeric(frame[ra], errors="coerce").notna() & pd.to_numeric(frame[dec], errors="coerce").notna()).any())
