"""Procedural Galaxy10-like galaxies: ``synthetic:galaxy10?n=3000&size=64&seed=42``.

An offline stand-in for Galaxy10 DECaLS. Each galaxy is a sum of physically
motivated components -- Sersic bulges, exponential discs seen at an
inclination, Ferrers bars, logarithmic spiral arms, dust lanes, star-forming
knots, tidal debris -- in three bands (g, r, z) with a colour per component
(bulges redder than discs, arms and knots bluer), blurred by a Gaussian PSF,
with sky and shot noise, field stars and faint background galaxies, and shown
like a Legacy Survey cutout (RGB = z, r, g through one asinh stretch).

Random access: image i depends only on (seed, i, its label, size). Its
generator ``default_rng([seed, 1, i])`` first draws the galaxy's parameters
(the metadata columns: cheap, no pixels) and then the pixel-level details and
noise, so any subset renders exactly like the full set. Lengths are drawn in
pixels of a 64-px frame and scaled, so ``size`` changes the resolution, not
the galaxy. Labels are a seeded permutation of a proportional label list.

Label noise like volunteers' (``label_noise=volunteer``; default ``none``): the pixels
always show the true class, but the *given* label is what a Galaxy Zoo vote would have
said. Near a class boundary of the generating parameters a galaxy can be given the
neighbouring class -- tight spirals with an open pitch angle called loose and back, weak
bars missed, round/in-between/cigar smooth galaxies near the axis-ratio gaps swapped,
small bulges of edge-on discs missed, faint companions of mergers missed and strong tides
of disturbed galaxies called mergers -- and a small share (1.5%) are plain slips to any
other class. 228 of the demo's 3,000 galaxies (7.6%) end up mislabelled; the true class is kept in
the metadata column ``true_label`` (so a label-issue finder can be scored), and the
train/test split is drawn on the given labels, as a real catalogue's would be.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from core.data.base import GALAXY10_CLASSES, GALAXY10_COUNTS, Dataset, SourceError, stratified_split

RENDERER_VERSION = "galaxy10-synth-1"  # bump whenever pixels or parameters change
REF = 64.0  # geometry is drawn in pixels of a 64-px frame
DEFAULTS = {"n": 3000, "size": 64, "seed": 42, "balance": "galaxy10", "test_fraction": 0.2, "label_noise": "none"}
LABEL_NOISE = ("none", "volunteer")
SLIP_RATE = 0.015  # plain slips: any other class
SIZE_RANGE = (16, 512)

# Colours as (g, r, z) flux per unit r flux, from typical colours: old
# stars g-r 0.75, r-z 0.40; discs 0.55, 0.28; star-forming arms and HII regions 0.24, 0.06.
OLD = np.array([0.50, 1.0, 1.45], np.float32)  # bulges, ellipticals: red
BAR = np.array([0.56, 1.0, 1.38], np.float32)
DISC = np.array([0.60, 1.0, 1.30], np.float32)
YOUNG = np.array([0.80, 1.0, 1.06], np.float32)  # arms, knots, clumps: blue
DUST_TAU = np.array([1.0, 0.72, 0.45], np.float32)  # extinction is stronger in g
# Shown like Legacy Survey cutouts: RGB = (z, r, g) with the survey's band
# weights (g boosted, z damped), one asinh stretch (sky sigma = 1 flux unit).
DISPLAY_WEIGHTS = np.array([0.75, 0.95, 1.50], np.float32)  # z, r, g
SOFT, WHITE, SKY = 2.5, 260.0, 0.5  # asinh softening, flux shown as white, sky pedestal

# Metadata columns and the value they take where they do not apply.
COLUMNS = {
    "variant": "",
    "brightness": np.nan, "size_px": np.nan, "axis_ratio": np.nan, "position_angle_deg": np.nan,
    "inclination_deg": np.nan, "sersic_index": np.nan, "bulge_fraction": np.nan,
    "pitch_angle_deg": np.nan, "n_arms": 0, "arm_strength": np.nan,
    "bar_strength": np.nan, "bar_length_px": np.nan,
    "has_dust_lane": False, "dust_opacity": np.nan, "n_clumps": 0,
    "companion_separation_px": np.nan, "companion_flux_ratio": np.nan,
    "tidal_strength": np.nan, "asymmetry": np.nan,
    "offset_x_px": 0.0, "offset_y_px": 0.0, "psf_fwhm_px": np.nan, "sky_noise": np.nan, "n_stars": 0,
}
PIXEL_COLUMNS = [c for c in COLUMNS if c.endswith("_px")]  # scaled by size / 64 in metadata


# ----------------------------------------------------------------------------- parameters

def _clip_normal(rng, mean, sd, lo, hi):
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def _disc_q(inc_deg, q0=0.12):
    """Projected axis ratio of a disc of intrinsic thickness q0 at inclination inc."""
    c = math.cos(math.radians(inc_deg))
    return math.sqrt(c * c + q0 * q0 * (1 - c * c))


def _spiral(p, rng, kind):
    # Pitch angle is what separates tight from loose; the two distributions
    # overlap (12-22 deg) on purpose, as the volunteers' votes do in real data.
    inc = math.degrees(math.acos(rng.uniform(0.45, 1.0)))
    h = rng.uniform(5.0, 8.0)
    if kind == "tight":
        pitch, bt = _clip_normal(rng, 13, 4, 6, 26), rng.uniform(0.18, 0.45)
        arms, floc = rng.choice([2, 2, 2, 3, 4]), rng.uniform(0.0, 0.25)
    elif kind == "loose":
        pitch, bt = _clip_normal(rng, 24, 6, 12, 42), rng.uniform(0.02, 0.18)
        arms, floc = rng.choice([2, 2, 3, 3, 4]), rng.uniform(0.15, 0.6)
    else:  # barred: arms start at the bar ends, mostly two of them
        pitch, bt = rng.uniform(10, 32), rng.uniform(0.08, 0.35)
        arms, floc = rng.choice([2, 2, 2, 2, 3]), rng.uniform(0.0, 0.4)
    p.update(variant=f"{arms}-arm", size_px=1.68 * h, axis_ratio=_disc_q(inc), inclination_deg=inc,
             sersic_index=rng.uniform(1.5, 4.0), bulge_fraction=bt, pitch_angle_deg=pitch,
             n_arms=int(arms), arm_strength=rng.uniform(0.35, 0.75), bar_strength=0.0,
             n_clumps=int(rng.poisson({"loose": 6, "tight": 2}.get(kind, 3))))
    p.update(_h=h, _floc=floc, _chir=rng.choice([-1.0, 1.0]), _phase=rng.uniform(0, 2 * np.pi),
             _bulge_re=rng.uniform(1.2, 2.4), _bulge_q=rng.uniform(0.75, 1.0),
             _arm_k=rng.uniform(1.5, 3.0) if kind == "loose" else rng.uniform(2.5, 4.0))  # loose arms are broader
    if kind == "barred":
        p.update(bar_strength=rng.uniform(0.18, 0.40), bar_length_px=h * rng.uniform(1.2, 2.0),
                 _bar_q=rng.uniform(0.18, 0.30), _bar_angle=rng.uniform(0, np.pi))


def _smooth(p, rng, kind):
    # Galaxy Zoo's "how rounded" answer is an axis-ratio call: small gaps
    # between the ranges, blurred by the PSF, leave a few honest confusions.
    q, n = {"round": (rng.uniform(0.82, 1.0), rng.uniform(2.5, 5.5)),
            "between": (rng.uniform(0.40, 0.70), rng.uniform(2.0, 5.0)),
            "cigar": (rng.uniform(0.18, 0.40), rng.uniform(1.0, 2.5))}[kind]
    re = rng.uniform(3.5, 7.0) if kind != "cigar" else rng.uniform(5.0, 9.0)
    p.update(variant="smooth", size_px=re, axis_ratio=q, sersic_index=n, bulge_fraction=1.0)


def _edge_on(p, rng, bulge):
    inc = rng.uniform(84, 90)
    h = rng.uniform(4.0, 6.5)
    dust = rng.random() < (0.6 if bulge else 0.3)
    p.update(variant="edge-on", size_px=1.68 * h, inclination_deg=inc,
             sersic_index=rng.uniform(2.0, 4.0) if bulge else np.nan,
             bulge_fraction=rng.uniform(0.25, 0.55) if bulge else rng.uniform(0.0, 0.05),
             has_dust_lane=bool(dust), dust_opacity=rng.uniform(1.0, 2.5) if dust else np.nan)
    p.update(_h=h, _z0=rng.uniform(0.45, 0.9) if not bulge else rng.uniform(0.6, 1.1),
             _bulge_re=rng.uniform(2.0, 3.5), _bulge_q=rng.uniform(0.6, 0.9))
    p["axis_ratio"] = _disc_q(inc, q0=p["_z0"] / h)  # of the disc; a bulge looks rounder


def _merging(p, rng):
    variant = rng.choice(["pair", "pair", "tails", "coalescing"])
    sep = {"pair": rng.uniform(9, 20), "tails": rng.uniform(5, 11), "coalescing": rng.uniform(2.5, 5)}[variant]
    p.update(variant=str(variant), size_px=rng.uniform(3.5, 6), axis_ratio=rng.uniform(0.5, 1.0),
             sersic_index=rng.uniform(1.5, 4), companion_separation_px=sep,
             companion_flux_ratio=rng.uniform(0.3, 1.0),
             tidal_strength=rng.uniform(0.05, 0.15) if variant == "pair" else rng.uniform(0.12, 0.3),
             n_clumps=int(rng.poisson(2)))
    p.update(_sep_angle=rng.uniform(0, 2 * np.pi), _types=rng.random(2) < 0.5,
             _q2=rng.uniform(0.5, 1.0), _pa2=rng.uniform(0, 180), _re2=rng.uniform(0.6, 1.0))


def _disturbed(p, rng):
    # Deliberately varied: each variant borrows another class's look, so
    # Disturbed scatters across the map as it does in real data.
    variant = str(rng.choice(["lopsided", "clumpy", "plume", "warped", "faint"], p=[0.35, 0.15, 0.25, 0.1, 0.15]))
    p.update(variant=variant, asymmetry=rng.uniform(0.2, 0.8), tidal_strength=rng.uniform(0.04, 0.18),
             size_px=rng.uniform(5, 10), axis_ratio=rng.uniform(0.4, 1.0),
             n_clumps=int(rng.poisson(3 if variant in ("clumpy", "lopsided") else 0.7)))
    if variant in ("lopsided", "clumpy"):
        p.update(inclination_deg=math.degrees(math.acos(rng.uniform(0.4, 1.0))))
        p["axis_ratio"] = _disc_q(p["inclination_deg"])
    if variant == "plume":
        p.update(sersic_index=rng.uniform(2, 4), size_px=rng.uniform(3.5, 6))
    if variant == "warped":
        p.update(inclination_deg=rng.uniform(78, 90), axis_ratio=rng.uniform(0.12, 0.3))
    if variant == "faint":
        p["brightness"] *= rng.uniform(0.4, 0.7)
    p.update(_tex=rng.uniform(0.2, 0.5), _angle=rng.uniform(0, 2 * np.pi))


DRAWERS = [
    _disturbed,
    _merging,
    lambda p, r: _smooth(p, r, "round"),
    lambda p, r: _smooth(p, r, "between"),
    lambda p, r: _smooth(p, r, "cigar"),
    lambda p, r: _spiral(p, r, "barred"),
    lambda p, r: _spiral(p, r, "tight"),
    lambda p, r: _spiral(p, r, "loose"),
    lambda p, r: _edge_on(p, r, bulge=False),
    lambda p, r: _edge_on(p, r, bulge=True),
]


def galaxy_rng(seed: int, i: int) -> np.random.Generator:
    """The generator of galaxy i: its parameters, then its pixels."""
    return np.random.default_rng([seed, 1, i])


def draw_galaxy(label: int, rng: np.random.Generator) -> dict:
    """Parameters of one galaxy of class `label` (64-px units); keys starting
    with '_' steer the painter and are not metadata."""
    p = dict(COLUMNS)
    p.update(brightness=float(np.exp(rng.normal(np.log(6000), 0.25))),
             position_angle_deg=rng.uniform(0, 180), offset_x_px=rng.normal(0, 1.0),
             offset_y_px=rng.normal(0, 1.0), psf_fwhm_px=rng.uniform(1.2, 2.0),
             sky_noise=rng.uniform(0.8, 1.2), n_stars=int(rng.poisson(0.8)))
    DRAWERS[label](p, rng)
    return p


def draw_labels(n: int, seed: int = 42, balance: str = "galaxy10") -> np.ndarray:
    """int64 (n,) class labels: Galaxy10 (or equal) proportions by largest
    remainder, assigned to rows by a seeded permutation."""
    w = np.asarray(GALAXY10_COUNTS if balance == "galaxy10" else [1] * 10, np.float64)
    quota = n * w / w.sum()
    counts = np.floor(quota).astype(np.int64)
    counts[np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]] += 1
    labels = np.repeat(np.arange(10), counts)
    return labels[np.random.default_rng([seed, 0]).permutation(n)].astype(np.int64)


def params_frame(labels: np.ndarray, seed: int = 42, size: int = 64) -> pd.DataFrame:
    """Generating parameters of every row as a DataFrame, without rendering."""
    rows = [draw_galaxy(int(c), galaxy_rng(seed, i)) for i, c in enumerate(labels)]
    df = pd.DataFrame([{k: r[k] for k in COLUMNS} for r in rows], columns=list(COLUMNS))
    df[PIXEL_COLUMNS] = df[PIXEL_COLUMNS] * (size / REF)
    return df.astype({"n_arms": "int64", "n_clumps": "int64", "n_stars": "int64", "has_dust_lane": bool})


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def volunteer_labels(labels: np.ndarray, params: pd.DataFrame, seed: int = 42, size: int = 64) -> np.ndarray:
    """Given labels with volunteer-like noise (see the module doc) from the true ``labels`` and
    the galaxies' parameters (``params_frame``): int64 (n,). Seeded by ``seed`` alone."""
    y = np.asarray(labels, np.int64)
    n = len(y)
    rng = np.random.default_rng([seed, 2])
    u, slip, other = rng.random(n), rng.random(n), rng.integers(1, 10, n)
    g = lambda c: params[c].to_numpy(np.float64)  # noqa: E731
    pitch, q, bt, bar = g("pitch_angle_deg"), g("axis_ratio"), g("bulge_fraction"), g("bar_strength")
    sep, flux, tide = g("companion_separation_px") * (REF / size), g("companion_flux_ratio"), g("tidal_strength")
    p_swap, to = np.zeros(n), y.copy()
    rules = [  # (true class, probability of the neighbouring class, that class)
        (6, 0.5 * _sigmoid((pitch - 19.0) / 1.5), 7),                       # tight but open arms -> loose
        (7, 0.5 * _sigmoid((17.0 - pitch) / 1.5), 6),                       # loose but wound -> tight
        (5, 0.45 * _sigmoid((0.24 - bar) / 0.02), np.where(pitch < 18, 6, 7)),  # weak bar missed
        (2, 0.4 * _sigmoid((0.86 - q) / 0.015), 3),                          # round, a little elongated
        (3, 0.4 * _sigmoid((q - 0.66) / 0.015), 2),                          # in-between, nearly round
        (3, 0.4 * _sigmoid((0.44 - q) / 0.015), 4),                          # in-between, nearly cigar
        (4, 0.4 * _sigmoid((q - 0.36) / 0.015), 3),                          # cigar, a little round
        (9, 0.45 * _sigmoid((0.32 - bt) / 0.02), 8),                         # small bulge missed
        (1, 0.4 * _sigmoid((0.45 - flux) / 0.05) * _sigmoid((sep - 12) / 2), 0),  # faint, far companion
        (0, 0.35 * _sigmoid((tide - 0.15) / 0.01), 1),                       # strong tides look like a merger
    ]
    for c, prob, target in rules:
        rows = (y == c) & np.isfinite(prob)
        p_swap[rows] = np.maximum(p_swap[rows], np.nan_to_num(prob)[rows])
        to[rows] = np.broadcast_to(target, n)[rows]
    given = np.where(u < 0.7 * p_swap, to, y)  # 0.7: about 6% swapped on the demo's set
    slips = slip < SLIP_RATE
    given[slips] = (y[slips] + other[slips]) % 10
    return given.astype(np.int64)


# ----------------------------------------------------------------------------- painting

@lru_cache(maxsize=8)
def _grid(size):
    """Pixel centres in 64-px units, origin at the frame centre: x (1,S), y (S,1)."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) * (REF / size) - REF / 2).astype(np.float32)
    return c[None, :], c[:, None]


@lru_cache(maxsize=8)
def _upsampler(size, cells):
    """(S, cells) bilinear interpolation matrix: a coarse random field -> smooth texture."""
    pos = (np.arange(size) + 0.5) / size * (cells - 1)
    lo = np.minimum(np.floor(pos).astype(int), cells - 2)
    u = np.zeros((size, cells), np.float32)
    u[np.arange(size), lo] = 1 - (pos - lo)
    u[np.arange(size), lo + 1] = pos - lo
    return u


def _blur_matrix(size, sigma64):
    """Symmetric (S,S) Gaussian blur matrix; G @ img @ G blurs both axes."""
    s = max(sigma64 * size / REF, 1e-3)
    d = np.arange(-size + 1, size, dtype=np.float32)
    k = np.exp(-0.5 * (d / s) ** 2)
    k /= k.sum()
    i = np.arange(size)
    return k[i[:, None] - i[None, :] + size - 1].astype(np.float32)


def _blur(img, size, sigma64):
    g = _blur_matrix(size, sigma64)
    return g @ img @ g


def _frame(x, y, cx, cy, angle):
    """Coordinates along (u) and across (v) a direction `angle` (radians)."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - np.float32(cx), y - np.float32(cy)
    return dx * np.float32(c) + dy * np.float32(s), dy * np.float32(c) - dx * np.float32(s)


def _add(img, profile, flux, colour, size):
    """Add a profile normalised to total r flux `flux` (64-px units) in `colour`."""
    total = float(profile.sum()) * (REF / size) ** 2
    if total > 0:
        img += (np.float32(flux / total) * colour)[:, None, None] * profile


def _sersic(u, v, re, n, q):
    b = 2 * n - 1 / 3 + 4 / (405 * n)
    r = np.sqrt(u * u + (v / np.float32(q)) ** 2 + np.float32(0.09))  # softened: pixels integrate the cusp
    return np.exp(np.float32(-b) * (r / np.float32(re)) ** np.float32(1 / n))


def _splat(layer, x, y, flux, colour, size):
    """Point sources at (x, y) (64-px units) with r flux `flux`, bilinear."""
    if len(x) == 0:
        return
    px = (np.asarray(x) + REF / 2) * (size / REF) - 0.5
    py = (np.asarray(y) + REF / 2) * (size / REF) - 0.5
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    sb = np.asarray(flux) * (size / REF) ** 2  # flux -> surface brightness of one pixel
    col = np.broadcast_to(np.asarray(colour, np.float32).reshape(-1, 3) if np.ndim(colour) == 2
                          else np.asarray(colour, np.float32), (len(px), 3))
    flat = layer.reshape(3, -1)
    for ox, oy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + ox, y0 + oy
        ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        idx = (yi * size + xi)[ok]
        for b in range(3):
            flat[b] += np.bincount(idx, (sb * w * col[:, b])[ok], minlength=size * size).astype(np.float32)


def _to_sky(X, Y, cx, cy, pa, q):
    """Disc-plane points (X, Y) -> sky (x, y) for a disc with projected axis ratio q."""
    c, s = math.cos(pa), math.sin(pa)
    u, v = X, Y * q
    return cx + u * c - v * s, cy + u * s + v * c


def _disc(L, p, rng, cx, cy, pa, flux):
    """A face-on-to-inclined disc galaxy: bulge, exponential disc, optional
    bar, logarithmic spiral arms with knots, optional lopsidedness."""
    x, y, size = L["x"], L["y"], L["size"]
    h, inc = p["_h"], p.get("inclination_deg", 30.0)
    q = _disc_q(inc)
    u, v = _frame(x, y, cx, cy, pa)
    X, Y = u, v / np.float32(q)
    R = np.sqrt(X * X + Y * Y + np.float32(0.04))
    base = np.exp(-R / np.float32(h))
    bt, bar = p.get("bulge_fraction", 0.1), p.get("bar_strength", 0.0) or 0.0
    if bt > 0:
        _add(L["img"], _sersic(u, v, p["_bulge_re"], p["sersic_index"], p["_bulge_q"]), flux * bt, OLD, size)
    r_in = 1.3 * p["_bulge_re"]
    if bar > 0:
        a, beta = p["bar_length_px"], p["_bar_angle"]
        c, s = np.float32(math.cos(beta)), np.float32(math.sin(beta))
        m2 = ((X * c + Y * s) / np.float32(a)) ** 2 + ((Y * c - X * s) / np.float32(a * p["_bar_q"])) ** 2
        _add(L["img"], np.clip(1 - m2, 0, None) ** 2, flux * bar, BAR, size)
        r_in = a
    theta = np.arctan2(Y, X)
    if not math.isnan(p.get("asymmetry", math.nan)):  # lopsided (m=1) disturbed disc
        base = base * (1 + np.float32(p["asymmetry"]) * np.cos(theta - np.float32(p["_angle"])) * (R / (R + np.float32(h))))
    smooth, arms = base, None
    m = p.get("n_arms", 0)
    if m:
        pitch = math.radians(p["pitch_angle_deg"])
        wind = np.float32(p["_chir"] / math.tan(pitch))
        phase = p["_phase"] if bar <= 0 else p["_bar_angle"] * m  # bar ends launch the arms
        k = p["_arm_k"]
        psi = np.float32(m) * (theta - wind * np.log(R / np.float32(r_in))) - np.float32(phase)
        prof = ((1 + np.cos(psi)) * np.float32(0.5)) ** np.float32(k)
        if p["_floc"] > 0:  # flocculent arms: patchy, broken
            tex = L["tex"](8)
            prof = prof * np.clip(1 + np.float32(2.0 * p["_floc"]) * tex, 0, None)
        w = np.float32(p["arm_strength"]) * (1 - np.exp(-(R / np.float32(r_in)) ** 2))
        mean_k = math.gamma(k + 0.5) / (math.sqrt(math.pi) * math.gamma(k + 1))
        arms = base * w * prof * np.float32(1 / mean_k)
        smooth = base * (1 - w)
        nk = p["n_clumps"]
        if nk:  # HII regions sit on the arm ridges
            Rk = h * rng.uniform(0.7, 2.8, nk)
            tk = (phase + 2 * np.pi * rng.integers(0, m, nk)) / m + wind * np.log(Rk / r_in) + rng.normal(0, 0.12, nk)
            sx, sy = _to_sky(Rk * np.cos(tk), Rk * np.sin(tk), cx, cy, pa, q)
            _splat(L["knots"], sx, sy, flux * rng.uniform(0.004, 0.015, nk), YOUNG * 1.1, size)
    elif p.get("n_clumps", 0):  # clumpy disc without arms
        nk = p["n_clumps"]
        Rk, tk = h * rng.uniform(0.3, 2.5, nk), rng.uniform(0, 2 * np.pi, nk)
        sx, sy = _to_sky(Rk * np.cos(tk), Rk * np.sin(tk), cx, cy, pa, q)
        _splat(L["knots"], sx, sy, flux * rng.uniform(0.006, 0.025, nk), YOUNG, size)
    disc_flux = flux * max(1 - bt - bar, 0.05)
    total = float(smooth.sum() + (arms.sum() if arms is not None else 0.0)) * (REF / size) ** 2
    L["img"] += (np.float32(disc_flux / total) * DISC)[:, None, None] * smooth
    if arms is not None:
        L["img"] += (np.float32(disc_flux / total) * YOUNG)[:, None, None] * arms


def _edge(L, p, cx, cy, pa, flux):
    """A disc seen (nearly) edge-on: exponential along, sech^2 across, a
    bulge, and a dust lane that also dims the bulge behind it."""
    x, y, size = L["x"], L["y"], L["size"]
    h, inc = p["_h"], p["inclination_deg"]
    u, v = _frame(x, y, cx, cy, pa)
    ci = math.cos(math.radians(inc))
    z = math.hypot(p["_z0"], 0.8 * h * ci)  # a slightly tilted disc looks thicker
    along = np.exp(-np.sqrt(u * u + np.float32((0.4 * h) ** 2)) / np.float32(h))
    e = np.exp(-2 * np.abs(v) / np.float32(z))
    disc = along * (e / (1 + e) ** 2)  # sech^2(v / z) / 4, without overflow
    bt = p["bulge_fraction"]
    img = np.zeros_like(L["img"])
    # late-type (bulgeless) discs are bluer: younger stars
    _add(img, disc, flux * (1 - bt), DISC if bt > 0.1 else (DISC + YOUNG) / 2, size)
    if bt > 0.0:
        n = p["sersic_index"] if p["sersic_index"] == p["sersic_index"] else 1.5
        _add(img, _sersic(u, v, p["_bulge_re"] * (1 if n > 1.5 else 0.6), n, p["_bulge_q"]), flux * bt, OLD, size)
    if p["has_dust_lane"]:
        zd = max(0.6, 0.8 * z)  # wide enough to survive the PSF at 64 px
        lane = np.exp(-0.5 * ((v - np.float32(1.5 * zd * ci * 6)) / np.float32(zd)) ** 2) * np.exp(-np.abs(u) / np.float32(2.5 * h))
        img *= np.exp(-np.float32(p["dust_opacity"]) * DUST_TAU[:, None, None] * lane)
    L["img"] += img


def _spheroid(L, cx, cy, pa, flux, re, n, q, colour=OLD):
    u, v = _frame(L["x"], L["y"], cx, cy, pa)
    _add(L["img"], _sersic(u, v, re, n, q), flux, colour, L["size"])


def _tail(L, rng, cx, cy, start, length, curl, width, flux, colour=DISC):
    """A tidal tail or plume: diffuse light along a curving arc."""
    t = np.linspace(0, 1, 40)
    ang = start + curl * t
    r = 2.0 + length * t
    _splat(L["diffuse"], cx + r * np.cos(ang) + rng.normal(0, width, 40), cy + r * np.sin(ang) + rng.normal(0, width, 40),
           flux * (1.2 - t) / 28.0, colour, L["size"])


def _paint(label, p, rng, L):
    cx, cy, pa = p["offset_x_px"], p["offset_y_px"], math.radians(p["position_angle_deg"])
    f = p["brightness"]
    if label in (5, 6, 7):
        _disc(L, p, rng, cx, cy, pa, f)
    elif label in (2, 3, 4):  # a red Sersic core inside a fainter, slightly bluer envelope
        halo = rng.uniform(0.1, 0.25)
        _spheroid(L, cx, cy, pa, f * (1 - halo), p["size_px"], p["sersic_index"], p["axis_ratio"])
        _spheroid(L, cx, cy, pa, f * halo, p["size_px"] * 2.2, 1.0, p["axis_ratio"], BAR)
    elif label in (8, 9):
        _edge(L, p, cx, cy, pa, f)
    elif label == 1:
        _paint_merger(L, p, rng, cx, cy, pa, f)
    else:
        _paint_disturbed(L, p, rng, cx, cy, pa, f)


def _paint_merger(L, p, rng, cx, cy, pa, f):
    a, sep, ratio = p["_sep_angle"], p["companion_separation_px"], p["companion_flux_ratio"]
    f1, f2 = f / (1 + ratio) * 1.3, f * ratio / (1 + ratio) * 1.3
    c1 = (cx - 0.5 * sep * math.cos(a) * ratio, cy - 0.5 * sep * math.sin(a) * ratio)
    c2 = (c1[0] + sep * math.cos(a), c1[1] + sep * math.sin(a))
    re1, re2 = p["size_px"], p["size_px"] * p["_re2"]
    for (gx, gy), flux, re, q, ang, is_disc in ((c1, f1, re1, p["axis_ratio"], pa, p["_types"][0]),
                                                 (c2, f2, re2, p["_q2"], math.radians(p["_pa2"]), p["_types"][1])):
        if is_disc:  # a disc with a bulge, its arms already torn into the tails
            _spheroid(L, gx, gy, ang, flux * 0.35, re * 0.35, 2.5, 0.9)
            _spheroid(L, gx, gy, ang, flux * 0.65, re, 1.0, max(q, 0.35), DISC)
        else:
            _spheroid(L, gx, gy, ang, flux, re * 0.8, p["sersic_index"], q)
    ts = p["tidal_strength"]
    if p["variant"] == "coalescing":  # one disturbed envelope around a double nucleus, with shells
        _spheroid(L, cx, cy, pa, f * 0.5, re1 * 1.8, 1.0, 0.75, DISC)
    for (gx, gy), sign in ((c1, 1), (c2, -1)):
        if rng.random() < (0.6 if p["variant"] == "pair" else 1.0):
            _tail(L, rng, gx, gy, a + np.pi * (sign < 0) + rng.normal(0, 0.8), rng.uniform(8, 20),
                  sign * rng.uniform(1.0, 2.5), 0.8, f * ts)
    if p["variant"] == "pair" and rng.random() < 0.5:  # a faint bridge between the two
        t = np.linspace(0.15, 0.85, 24)
        bend = rng.normal(0, 2.5)
        bx = c1[0] + t * (c2[0] - c1[0]) - bend * np.sin(np.pi * t) * math.sin(a)
        by = c1[1] + t * (c2[1] - c1[1]) + bend * np.sin(np.pi * t) * math.cos(a)
        _splat(L["diffuse"], bx, by, np.full(24, f * ts * 0.5 / 24), DISC, L["size"])
    nk = p["n_clumps"]
    if nk:
        _splat(L["knots"], cx + rng.normal(0, sep * 0.6 + 2, nk), cy + rng.normal(0, sep * 0.6 + 2, nk),
               f * rng.uniform(0.005, 0.02, nk), YOUNG, L["size"])


def _paint_disturbed(L, p, rng, cx, cy, pa, f):
    var, re, asym, ts = p["variant"], p["size_px"], p["asymmetry"], p["tidal_strength"]
    if var in ("lopsided", "clumpy"):
        d = {"_h": re / 1.68, "inclination_deg": p["inclination_deg"], "bulge_fraction": 0.1 if var == "lopsided" else 0.0,
             "_bulge_re": 1.5, "sersic_index": 2.0, "_bulge_q": 0.9, "asymmetry": asym, "_angle": p["_angle"],
             "n_clumps": p["n_clumps"]}
        if var == "lopsided" and rng.random() < 0.6:  # one-armed, lopsided spiral
            d.update(n_arms=1, pitch_angle_deg=rng.uniform(15, 40), _chir=rng.choice([-1.0, 1.0]),
                     _phase=p["_angle"], _arm_k=2.0, _floc=0.5, arm_strength=0.6)
        _disc(L, d, rng, cx, cy, pa, f)
        if var == "clumpy":  # a patchy, irregular body (patches, not separate nuclei)
            L["img"] *= np.clip(1 + np.float32(p["_tex"]) * L["tex"](6), 0.3, None)
    elif var == "plume":
        _spheroid(L, cx, cy, pa, f * 0.8, re, p["sersic_index"], p["axis_ratio"])
        _tail(L, rng, cx, cy, p["_angle"], rng.uniform(8, 18), rng.normal(0, 0.6), 2.0, f * ts, BAR)
        if rng.random() < 0.5:  # shells: sharp arcs on the far side
            for r in rng.uniform(6, 14, 2):
                ang = p["_angle"] + np.pi + np.linspace(-0.9, 0.9, 20)
                _splat(L["diffuse"], cx + r * np.cos(ang), cy + r * np.sin(ang), np.full(20, f * ts * 0.2 / 20), BAR, L["size"])
    elif var == "warped":
        d = {"_h": re / 1.68, "inclination_deg": p["inclination_deg"], "_z0": 0.8, "bulge_fraction": 0.1,
             "sersic_index": 2.0, "_bulge_re": 1.5, "_bulge_q": 0.8, "has_dust_lane": False}
        _edge(L, d, cx, cy, pa, f * 0.75)
        for sign in (1, -1):  # the disc ends bend opposite ways (an integral-sign warp)
            _tail(L, rng, cx, cy, pa + (0 if sign > 0 else np.pi), re * 1.4, sign * asym * 0.8, 0.6, f * ts)
    else:  # faint, diffuse, patchy
        _spheroid(L, cx, cy, pa, f, re, 1.0, p["axis_ratio"], DISC)
        L["img"] *= np.clip(1 + np.float32(p["_tex"] * 1.4) * L["tex"](5), 0.1, None)
    if var != "warped" and rng.random() < 0.35:
        _tail(L, rng, cx, cy, p["_angle"] + rng.normal(0, 1), rng.uniform(6, 16), rng.normal(0, 1.5), 1.2, f * ts)
    if var in ("plume", "faint") and p["n_clumps"]:
        nk = p["n_clumps"]
        _splat(L["knots"], cx + rng.normal(0, re, nk), cy + rng.normal(0, re, nk), f * rng.uniform(0.004, 0.015, nk), YOUNG, L["size"])


def render_galaxy(label: int, seed: int, i: int, size: int = 64) -> np.ndarray:
    """uint8 (size, size, 3) image of galaxy i (class `label`) of a seeded set."""
    rng = galaxy_rng(seed, i)
    p = draw_galaxy(label, rng)
    x, y = _grid(size)
    L = {"x": x, "y": y, "size": size, "img": np.zeros((3, size, size), np.float32),
         "knots": np.zeros((3, size, size), np.float32), "diffuse": np.zeros((3, size, size), np.float32)}

    def texture(cells):  # smooth unit-variance random field on the frame
        u = _upsampler(size, cells)
        return u @ rng.standard_normal((cells, cells), dtype=np.float32) @ u.T * np.float32(1.6)

    L["tex"] = texture
    _paint(label, p, rng, L)
    img = L["img"]
    red = rng.normal(0, 0.08)  # galaxy-to-galaxy colour scatter, along the blue-red axis only
    img *= np.exp(np.array([-red, 0.0, red], np.float32))[:, None, None]
    if L["knots"].any():
        img += _blur(L["knots"], size, 0.45)
    if L["diffuse"].any():
        img += _blur(L["diffuse"], size, 1.8)
    # field: stars (point sources) and faint, small background galaxies
    ns, nb = p["n_stars"], int(rng.poisson(3.0))
    ang, rad = rng.uniform(0, 2 * np.pi, ns + nb), np.sqrt(rng.uniform(0.06, 1.0, ns + nb)) * REF * 0.7
    tint = rng.uniform(0, 1, ns + nb)[:, None]
    colour = tint * OLD * 1.15 + (1 - tint) * YOUNG * 0.8  # from orange K stars to blue-white
    flux = np.concatenate([np.exp(rng.uniform(np.log(40), np.log(3000), ns)), np.exp(rng.uniform(np.log(10), np.log(60), nb))])
    stars = np.zeros_like(img)
    _splat(stars, rad * np.cos(ang), rad * np.sin(ang), flux, colour, size)
    img += stars
    psf = p["psf_fwhm_px"] / 2.355  # Gaussian core plus faint wide wings, so bright stars glow
    img = np.float32(0.92) * _blur(img, size, psf) + np.float32(0.08) * _blur(img, size, 3.5 * psf)
    # sky noise (equal on screen, so deeper in g) plus the galaxy's own shot noise
    sky = np.float32(p["sky_noise"]) / DISPLAY_WEIGHTS[::-1, None, None]
    sigma = sky * np.sqrt(1 + np.clip(img, 0, None) * np.float32(0.02))
    img += sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return _display(img)


def _display(bands):
    """(g, r, z) fluxes -> uint8 RGB = (z, r, g), one asinh stretch on the
    mean so colours survive into the bright parts (Lupton et al. 2004)."""
    rgb = bands[::-1] * DISPLAY_WEIGHTS[:, None, None] + np.float32(SKY)
    mean = rgb.mean(axis=0)
    safe = np.where(np.abs(mean) < 1e-3, np.float32(1e-3), mean)
    scale = np.arcsinh(safe / np.float32(SOFT)) / (safe * np.float32(math.asinh(WHITE / SOFT)))
    out = np.clip(rgb * scale, 0, 1) * np.float32(255)
    return (out + np.float32(0.5)).astype(np.uint8).transpose(1, 2, 0)


# ----------------------------------------------------------------------------- dataset

def render(n: int, size: int = 64, seed: int = 42, balance: str = "galaxy10"):
    """Render a whole set: (images uint8 (n, size, size, 3), labels int64 (n,),
    params DataFrame (n rows, one column per generating parameter))."""
    o = _validate({"n": n, "size": size, "seed": seed, "balance": balance})
    labels = draw_labels(o["n"], o["seed"], o["balance"])
    images = np.stack([render_galaxy(int(c), o["seed"], i, o["size"]) for i, c in enumerate(labels)])
    return images, labels, params_frame(labels, o["seed"], o["size"])


def _validate(options: dict) -> dict:
    """Query-string options (strings or values) -> typed, checked options."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise SourceError(f"unknown synthetic option(s) {', '.join(sorted(unknown))}: use {', '.join(DEFAULTS)}")
    o = {**DEFAULTS, **options}

    def as_int(key, lo, hi):
        try:
            v = int(str(o[key]).strip())
        except ValueError:
            raise SourceError(f"synthetic option {key}={o[key]!r} is not an integer") from None
        if not lo <= v <= hi:
            raise SourceError(f"synthetic option {key}={v} is out of range: use {lo}..{hi}")
        return v

    out = {"n": as_int("n", 1, 10_000_000), "size": as_int("size", *SIZE_RANGE), "seed": as_int("seed", 0, 2**63 - 1)}
    out["balance"] = str(o["balance"]).strip().lower()
    if out["balance"] not in ("galaxy10", "uniform"):
        raise SourceError(f"synthetic option balance={o['balance']!r}: use galaxy10 or uniform")
    try:
        tf = float(str(o["test_fraction"]).strip())
    except ValueError:
        raise SourceError(f"synthetic option test_fraction={o['test_fraction']!r} is not a number") from None
    if not 0.0 <= tf < 1.0:
        raise SourceError(f"synthetic option test_fraction={tf} is out of range: use 0 <= test_fraction < 1")
    out["test_fraction"] = tf
    out["label_noise"] = str(o["label_noise"]).strip().lower()
    if out["label_noise"] not in LABEL_NOISE:
        raise SourceError(f"synthetic option label_noise={o['label_noise']!r}: use {' or '.join(LABEL_NOISE)}")
    return out


KEEP_BYTES = 256 << 20  # sets up to this size keep their rendered pixels in memory


@dataclass
class SyntheticDataset(Dataset):
    """Rendered on demand: `_load(rows)` draws each row from its own generator.

    A set of at most ``KEEP_BYTES`` of pixels (the demo's 3,000 at 64 px: 37 MB) keeps
    each row once rendered, so the finetunes and extractions of one process render it
    once (1.9 s for the demo set) instead of once per pass. Copies (pickles: Ray
    workers) start without them."""

    seed: int = 42  # with the true labels, all that the pixels depend on
    true_labels: np.ndarray | None = None  # what the pixels show, when the given labels are noisy
    batches_are_originals = True  # rendered at image_size
    _kept: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def _truth(self, i) -> int:
        return int((self.labels if self.true_labels is None else self.true_labels)[i])

    def _load(self, rows: np.ndarray) -> np.ndarray:
        s = self.image_size
        if len(rows) == 0:
            return np.zeros((0, s, s, 3), np.uint8)
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"rows out of range 0..{len(self) - 1}")
        if len(self) * s * s * 3 > KEEP_BYTES:
            return np.stack([render_galaxy(self._truth(i), self.seed, int(i), s) for i in rows])
        if self._kept is None:
            self._kept = (np.zeros((len(self), s, s, 3), np.uint8), np.zeros(len(self), bool))
        pixels, have = self._kept
        for i in np.unique(rows[~have[rows]]):  # a row rendered twice by two threads is the same row
            pixels[i] = render_galaxy(self._truth(i), self.seed, int(i), s)
            have[i] = True
        return pixels[rows]

    def __getstate__(self):
        return {**self.__dict__, "_kept": None}


def source_ref(options: dict) -> str:
    """The canonical reference of these options: every option, defaults filled in (but
    ``label_noise`` only when there is some, so references made before it existed still hold)."""
    o = _validate(options)
    keys = [k for k in DEFAULTS if k != "label_noise" or o[k] != "none"]
    return "synthetic:galaxy10?" + "&".join(f"{k}={o[k]}" for k in keys)


def open_synthetic(ref: str, body: str, **options) -> SyntheticDataset:
    """Open ``synthetic:galaxy10?n=..&size=..&seed=..&balance=..&test_fraction=..[&label_noise=volunteer]``."""
    if body != "galaxy10":
        raise SourceError(f"unknown synthetic dataset {body!r} in {ref!r}: the only one is synthetic:galaxy10")
    o = _validate(options)
    truth = draw_labels(o["n"], o["seed"], o["balance"])
    metadata = params_frame(truth, o["seed"], o["size"])
    labels, true_labels = truth, None
    if o["label_noise"] == "volunteer":
        labels, true_labels = volunteer_labels(truth, metadata, o["seed"], o["size"]), truth
        metadata["true_label"] = truth
    source = source_ref(o)
    query = source.split("?", 1)[1]
    return SyntheticDataset(
        source=source,
        class_names=list(GALAXY10_CLASSES),
        ids=np.array([f"syn-{i:06d}" for i in range(o["n"])]),
        labels=labels,
        splits=stratified_split(labels, o["test_fraction"], o["seed"]),
        metadata=metadata,
        image_size=o["size"],
        content_key=f"{RENDERER_VERSION}?{query}",
        seed=o["seed"],
        true_labels=true_labels,
    )
