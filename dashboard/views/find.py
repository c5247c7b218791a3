"""Find a galaxy: by id, by sky position (nearest catalogue galaxy with its
separation), or by uploading an image, whose features are computed on the fly with
the selected checkpoint and compared with every galaxy's, before and after finetuning."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.data import sky

from .. import data as D
from ..astro import has_sky, most_similar, positions
from .common import Context, embeddings, gallery, run_data, run_index, search_note

HOW = {"id": "by id", "position": "by sky position", "image": "by image"}


def find_view(ctx: Context) -> None:
    st.caption("Look a galaxy up by its id, by where it is on the sky, or by an image of your own: "
               "an uploaded image goes through the selected checkpoint and lands among its nearest galaxies.")
    how = st.radio("Find", list(HOW), format_func=HOW.get, key="find_by", horizontal=True,
                   label_visibility="collapsed")
    {"id": by_id, "position": by_position, "image": by_image}[how](ctx)


def by_id(ctx: Context) -> None:
    text = st.text_input("Galaxy id (or part of it)", key="find_id", placeholder=f"e.g. {ctx.data.frame['id'].iloc[0]}")
    text = text.strip()
    if not text:
        return
    exact = np.flatnonzero(ctx.data.ids == text)  # fixed-width array: 10M galaxies in tens of ms
    hits = exact if len(exact) else np.flatnonzero(
        ctx.data.frame["id"].astype(str).str.contains(text, regex=False).to_numpy())
    if not len(hits):
        st.warning(f"No galaxy id contains {text!r} in this run.")
        return
    st.caption(f"{len(hits):,} galaxies match" + (", first 24 shown" if len(hits) > 24 else "") + ".")
    gallery(ctx, hits, key="find-id", limit=24)


def by_position(ctx: Context) -> None:
    if not has_sky(ctx.data):
        st.info("This dataset has no sky positions, so it cannot be searched by position. "
                "(The synthetic demo galaxies have none; the Galaxy10 h5 file, or a folder/hf/fits source with "
                "its ra and dec columns named, has them.)")
        return
    text = st.text_input("RA and Dec", key="find_pos", placeholder="150.1196 +2.2058  or  10:00:28.7 +02:12:21",
                         help="degrees, or sexagesimal (RA in hours, Dec in degrees); ICRS")
    if not text.strip():
        return
    try:
        ra, dec = sky.parse_position(text)
    except sky.CoordinateError as e:
        st.error(str(e))
        return
    cat_ra, cat_dec = positions(ctx.data.frame)
    idx, sep = sky.nearest(cat_ra, cat_dec, ra, dec, k=5)
    st.markdown(f"Searched RA {ra:.5f}° Dec {dec:+.5f}° ({sky.sexagesimal(ra, dec)[0]}).")
    if sep[0] > sky.MATCH_WARNING_ARCSEC:
        st.warning(f"The nearest galaxy in this catalogue is {_arcsec(sep[0])} away, beyond "
                   f"{sky.MATCH_WARNING_ARCSEC:.0f}″: probably not the galaxy you mean.")
    else:
        st.success(f"Nearest galaxy: {ctx.data.frame['id'].iloc[idx[0]]}, {_arcsec(sep[0])} away.")
    f = ctx.data.frame.iloc[idx]
    st.dataframe(pd.DataFrame({"id": f["id"].to_numpy(), "separation (arcsec)": np.round(sep, 2),
                               "class": f["true"].to_numpy()}), hide_index=True)
    gallery(ctx, idx, key="find-pos", limit=5, columns=5, notes=[f"separation {_arcsec(s)}" for s in sep])


def _arcsec(s: float) -> str:
    return f"{s:.1f}″" if s < 120 else f"{s / 60:.1f}′" if s < 7200 else f"{s / 3600:.1f}°"


@st.cache_resource(show_spinner="Loading the checkpoint…", max_entries=4)
def _checkpoint(model: str, cache: str):
    from core.models.load import load_checkpoint

    return load_checkpoint(model, device="cpu", cache=cache)


@st.cache_data(show_spinner="Reading the image…", max_entries=16)
def decoded_upload(digest: str, _content: bytes, name: str) -> np.ndarray:
    """The uploaded file's pixels as a model is fed them (shrunk as decoded when huge), cached by
    its content hash; decoded under `core.extract.upload`'s bound on concurrent uploads."""
    from core.extract.upload import read_upload

    return read_upload(_content, name)


@st.cache_data(show_spinner="Computing the image's features…", max_entries=64)
def upload_features(digest: str, model: str, pooling: str, cache: str, _image: np.ndarray):
    """(features (d,), class probabilities or None) of an uploaded image, cached by its content hash."""
    from core.extract.upload import embed_upload

    return embed_upload(_image, _checkpoint(model, cache), pooling)


def plain(text: str) -> str:
    """``text`` shown as typed in a Markdown element (backslash before every Markdown character)."""
    return "".join("\\" + c if c in "\\`*_{}[]()<>#+-.!|$~:" else c for c in str(text))


def by_image(ctx: Context) -> None:
    from core.extract.upload import CONCURRENT, IMAGE_TYPES, MAX_SIDE, content_hash

    upload = st.file_uploader("An image of a galaxy", type=IMAGE_TYPES, key="find_upload",
                              help="PNG, JPEG, WebP, TIFF, or a g,r,z FITS cube; it goes through the selected "
                                   "checkpoint exactly as `extract` reads the same file from a folder")
    st.caption(f"Images larger than {MAX_SIDE:,} pixels a side are shrunk as they are read; at most "
               f"{CONCURRENT} uploads are worked on at once on this server, others wait their turn.")
    if upload is None:
        return
    content = upload.getvalue()
    digest = content_hash(content)
    k = st.slider("How many", 4, 16, 8, key="find_k")
    runs = encoder_runs(ctx)
    try:
        image = decoded_upload(digest, content, upload.name)
    except Exception as e:
        st.error(plain(str(e).splitlines()[0]))
        return
    st.image(image, width=128)
    st.text(f"{upload.name} · {image.shape[1]} x {image.shape[0]} px as read · sha256 {digest}")  # plain text
    for col, run in zip(st.columns(len(runs)), runs):
        with col:
            similar_to_upload(ctx, run, image, digest, k)


def encoder_runs(ctx: Context, most: int = 4) -> list[dict]:
    """The feature spaces to compare side by side: the selected model generic and finetuned,
    then every other model with features of this dataset (e.g. a timm: galaxy-native encoder)."""
    runs = []
    for run in (ctx.catalog.counterpart(ctx.run, "generic"), ctx.catalog.finetuned_for(ctx.run)):
        if run is not None and run not in runs:
            runs.append(run)
    for model in ctx.catalog.models(ctx.dataset):
        if model != D.model_label(ctx.run):
            others = ctx.catalog.runs(ctx.dataset, model)
            runs.append(next((r for r in others if D.run_mode(r) == "full"), others[0]))
    return runs[:most]


def similar_to_upload(ctx: Context, run: dict, image: np.ndarray, digest: str, k: int) -> None:
    st.markdown(f"**{ctx.label(run)}** · {D.model_label(run)} · `{run.get('model')}`")
    try:
        q, probs = upload_features(digest, run["model"], run.get("pooling") or "auto", str(ctx.cache), image)
    except Exception as e:  # e.g. the checkpoint is not on this machine
        st.error(f"Could not compute its features with `{run.get('model')}`: {plain(str(e).splitlines()[0])}")
        return
    data = run_data(run)
    X, norms = embeddings(run)
    if len(q) != X.shape[1]:
        st.error(f"The checkpoint gives {len(q)}-d features but this run holds {X.shape[1]}-d ones.")
        return
    top, bottom, sim, how = most_similar(X, norms, q, k, run_index(run, "cosine"))
    if probs is not None:
        mapping = D.prediction_mapping(data.class_names, run.get("id2label"))
        if mapping is not None and 0 <= mapping[int(np.argmax(probs))] < len(data.class_names):
            st.caption(f"Its head says: {data.class_names[mapping[int(np.argmax(probs))]]} ({probs.max():.2f})")
    labels = data.frame["true"].to_numpy()
    s_top = np.array([sim[p] for p in top])
    st.caption(f"Most similar: {pd.Series(labels[top]).value_counts().idxmax()} "
               f"({(labels[top] == pd.Series(labels[top]).value_counts().idxmax()).sum()} of {len(top)}); "
               f"cosine similarity {s_top.min():.4f}–{s_top.max():.4f}; {search_note(how)}.")
    gallery(ctx, top, key=f"up-top-{run['key']}", data=data, columns=4, limit=k,
            notes=[f"**similarity {sim[p]:.4f}**" for p in top])
    if bottom is None:
        st.caption(f"The least similar are not shown for a run this large: finding them reads all "
                   f"{data.n:,} galaxies' features, which the index avoids.")
        return
    with st.expander(f"Least similar ({k})"):
        gallery(ctx, bottom, key=f"up-bottom-{run['key']}", data=data, columns=4, limit=k,
                notes=[f"similarity {sim[p]:.4f}" for p in bottom], neighbours_button=False)
