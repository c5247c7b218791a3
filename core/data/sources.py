"""Dataset references -> one Dataset interface.

A reference is an explicit string, never guessed:

=====================  ==========================================================
``synthetic:galaxy10``  procedurally rendered Galaxy10-like galaxies (offline demo);
                        options as ``synthetic:galaxy10?n=3000&size=64&seed=42``
``h5:PATH``             the astroNN ``Galaxy10_DECals.h5`` file (or one in its layout)
``hf:OWNER/NAME``       a Hugging Face dataset by hub id (needs network or HF cache)
``hf:LOCAL_DIR``        a ``save_to_disk`` folder or a folder of parquet files
``folder:DIR``          images listed in ``DIR/labels.csv`` (``file,label[,...]``)
``parquet:PATH``        a catalogue: a parquet file or folder with an image column (paths or
                        bytes) plus label/metadata columns, streamed (see ``catalogue.py``)
``fits:DIR``            multi-band FITS cutouts (g, r, z) turned into RGB (see ``fits.py``)
=====================  ==========================================================
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from core.data.base import GALAXY10_CLASSES, Dataset, SourceError  # noqa: F401

PREFIXES = ("synthetic", "h5", "hf", "folder", "fits", "parquet")


def split_ref(ref: str, kinds=PREFIXES, what: str = "dataset") -> tuple[str, str, dict]:
    """Split ``prefix:body?opt=v`` into (prefix, body, options); raise SourceError with
    the accepted forms when the prefix is missing or unknown."""
    if not isinstance(ref, str) or ":" not in ref:
        raise SourceError(
            f"{what} reference {ref!r} has no prefix: write one of "
            + ", ".join(f"{k}:..." for k in kinds)
        )
    prefix, body = ref.split(":", 1)
    if prefix not in kinds:
        raise SourceError(
            f"unknown {what} prefix {prefix!r} in {ref!r}: use one of " + ", ".join(f"{k}:" for k in kinds)
        )
    options = {}
    if "?" in body:
        body, query = body.split("?", 1)
        options = dict(parse_qsl(query))
    if not body:
        raise SourceError(f"{what} reference {ref!r} is empty after {prefix}:")
    return prefix, body, options


def normalize_ref(ref: str) -> str:
    """The canonical spelling of a reference: local paths made absolute, so the same
    data gets the same name whatever folder a command ran from."""
    prefix, body, _ = split_ref(ref, kinds=PREFIXES + ("dir", "demo", "timm"), what="reference")
    query = ref.split("?", 1)[1] if "?" in ref else ""
    local = prefix in ("h5", "folder", "dir", "fits", "parquet") or (prefix in ("hf", "timm") and Path(body).expanduser().exists())
    if local:
        body = str(Path(body).expanduser().resolve())
    return f"{prefix}:{body}" + (f"?{query}" if query else "")


def canonical_ref(ref: str) -> str:
    """The spelling the cache records for a dataset or checkpoint reference, so a
    lookup matches however the user wrote it: `normalize_ref`, and for
    ``synthetic:`` every option with its value (defaults filled in, as the opened
    Dataset's ``source``): ``synthetic:galaxy10`` ->
    ``synthetic:galaxy10?n=3000&size=64&seed=42&balance=galaxy10&test_fraction=0.2``."""
    ref = normalize_ref(ref)
    prefix, body, options = split_ref(ref, kinds=PREFIXES + ("dir", "demo", "timm"), what="reference")
    if prefix == "synthetic" and body == "galaxy10":
        from core.data.synthetic import source_ref

        return source_ref(options)
    return ref


def open_dataset(ref: str, **kwargs) -> Dataset:
    """Open a dataset reference (see module docstring). Raises SourceError for user errors."""
    prefix, body, options = split_ref(ref)
    ref = normalize_ref(ref)
    options.update(kwargs)
    if prefix == "synthetic":
        from core.data.synthetic import open_synthetic

        return open_synthetic(ref, body, **options)
    if prefix == "h5":
        from core.data.h5 import open_h5

        split_from = options.pop("split_from", None)
        ds = open_h5(ref, Path(body).expanduser(), **options)
        if split_from:  # the paper's split: ?split_from=hf:matthieulel/galaxy10_decals (core/data/paper_split.py)
            from core.data.paper_split import matched_splits

            ds.splits = matched_splits(ds, open_dataset(split_from))
            ds.content_key += f":split_from={split_from}"
        return ds
    if prefix == "hf":
        from core.data.hf import open_hf

        return open_hf(ref, body, **options)
    if prefix == "parquet":
        from core.data.catalogue import open_catalogue

        return open_catalogue(ref, Path(body).expanduser(), **options)
    if prefix == "fits":
        from core.data.fits import open_fits

        return open_fits(ref, Path(body).expanduser(), **options)
    from core.data.folder import open_folder

    return open_folder(ref, Path(body).expanduser(), **options)
