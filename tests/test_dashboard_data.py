"""The dashboard's pure pieces: catalog, run data, scores, selections, neighbours,
figures and thumbnails, without Streamlit or a browser."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from core.store import cache as store
from dashboard import data as D
from dashboard import figures as F
from dashboard.thumbs import placeholder_png, thumbnail_png


@pytest.fixture(scope="module")
def cache(dashboard_cache):
    return dashboard_cache


@pytest.fixture(scope="module")
def catalog(cache):
    return D.Catalog.from_runs(store.list_runs(cache))


def _run(catalog, mode, dataset_index=0):
    dataset = list(catalog.datasets().values())[dataset_index]
    return catalog.runs(dataset, mode=mode)[0]


def test_catalog_groups_runs_like_the_sidebar(catalog):
    datasets = catalog.datasets()
    assert list(datasets) == ["galaxies", "other-galaxies"]  # the one with predictions first
    ref = datasets["galaxies"]
    assert catalog.models(ref) == ["DINOv2 · small"]
    assert catalog.modes(ref, "DINOv2 · small") == ["generic", "head", "full"]
    assert catalog.modes(datasets["other-galaxies"], "DINOv2 · small") == ["generic"]
    full = _run(catalog, "full")
    generic = catalog.counterpart(full, "generic")
    assert generic["model"] == "demo:generic" and catalog.finetuned_for(generic) is full
    assert catalog.projection_methods(full["key"]) == ["tsne", "pca"]
    assert catalog.projection(full["key"], "tsne", generic["key"])["aligned_to"] == generic["key"]
    assert catalog.projection(full["key"], "umap") is None
    assert catalog.evaluation(full["key"])["macro_f1"] > 0.5
    assert catalog.evaluation(generic["key"]) is None
    assert not D.Catalog.from_runs([])


def test_models_with_a_finetuned_run_come_first(catalog):
    """The app opens on the first model: a generic-only encoder listed earlier (e.g. a `timm:` run whose key
    sorts first) must not push the model with generic and finetuned runs off the first load."""
    ref = catalog.datasets()["galaxies"]
    encoder = {**_run(catalog, "generic"), "key": "0000", "model": "timm:DIR", "family": "convnext_nano",
               "size": "nano"}
    cat = D.Catalog.from_runs([encoder, *catalog.features])
    assert cat.models(ref) == ["DINOv2 · small", "convnext_nano · nano"]


def test_labels_and_modes():
    assert D.dataset_label("synthetic:galaxy10?n=3000&size=64") == "galaxy10 (synthetic)"
    assert D.dataset_label("folder:/data/galaxyzoo-decals-examples/") == "galaxyzoo-decals-examples"
    assert D.dataset_label("h5:/x/Galaxy10_DECals.h5") == "Galaxy10_DECals"
    assert D.run_mode({"mode": "head"}) == "head"
    assert D.run_mode({"mode": None, "has_head": False}) == "generic"
    assert D.run_mode({"mode": None, "has_head": True}) == "finetuned"
    assert D.is_random_stand_in({"model": "demo:generic", "mode": "generic"})
    assert not D.is_random_stand_in({"model": "hf:facebook/dinov2-base", "mode": "generic"})
    assert D.model_label({"family": "dinov2", "size": "base"}) == "DINOv2 · base"


def test_prediction_mapping_by_name_and_foreign_heads():
    names = ["Disturbed", "Merging", "Round Smooth"]
    assert D.prediction_mapping(names, None).tolist() == [0, 1, 2]
    assert D.prediction_mapping(names, {"0": "round smooth", "1": "Disturbed", "2": "merging"}).tolist() == [2, 0, 1]
    assert D.prediction_mapping(names, {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}).tolist() == [0, 1, 2]
    assert D.prediction_mapping(names, {str(i): f"imagenet {i}" for i in range(1000)}) is None


def test_run_data_with_and_without_head(catalog):
    full = D.read_run(_run(catalog, "full"))
    assert full.has_predictions and {"pred", "predicted", "confidence", "correct"} <= set(full.frame.columns)
    assert full.meta_columns() == ["meta_redshift", "meta_pitch_angle"]
    assert full.ids[0] == "gal000000" and full.ids.dtype.kind == "U"
    assert full.custom.dtype == np.float32 and full.custom[3, 0] == 3 and 0 < full.custom[3, 1] <= 1
    generic = D.read_run(_run(catalog, "generic"))
    assert not generic.has_predictions and "no classification head" in generic.no_predictions_reason
    assert "pred" not in generic.frame.columns and np.isnan(generic.custom[:, 1]).all()
    assert generic.positions([5, 3, 10_000]).tolist() == [5, 3]


def test_run_data_with_a_foreign_head_has_no_predictions():
    table = pd.DataFrame({"row": [0, 1], "id": ["a", "b"], "split": ["test"] * 2, "label": [0, 1],
                          "pred": [500, 3], "confidence": [0.5, 0.6]})
    run = {"class_names": ["A", "B"], "has_head": True, "id2label": {str(i): f"c{i}" for i in range(1000)}}
    data = D.build_run_data(run, table)
    assert not data.has_predictions and "1000 classes" in data.no_predictions_reason


def test_embeddings_and_projection_alignment(catalog):
    run = _run(catalog, "full")
    X = D.read_embeddings(run["path"])
    assert X.dtype == np.float32 and X.shape == (300, 32)
    data = D.read_run(run)
    proj = pd.DataFrame({"row": [2, 0, 999], "x": [1.0, 2.0, 3.0], "y": [4.0, 5.0, 6.0]})
    xy = D.align_projection(data, proj, {})
    assert xy.x.dtype == np.float32 and xy.x[2] == 1.0 and xy.y[0] == 5.0 and np.isnan(xy.x[1])


def test_dashboard_scores_are_core_evaluation_on_the_chosen_split():
    """The Confusion and Compare views score through core.analysis.evaluation (one rule):
    only the chosen split counts, and macro F1 equals sklearn's on it."""
    from sklearn.metrics import confusion_matrix, f1_score

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    p[:200] = y[:200]
    split = np.where(np.arange(500) < 300, "test", "train")
    frame = pd.DataFrame({"label": y, "pred": p, "split": split})
    rep = D.split_scores(frame, list("abcd"), "test")
    assert (rep["confusion"] == confusion_matrix(y[:300], p[:300])).all()
    assert rep["macro_f1"] == pytest.approx(f1_score(y[:300], p[:300], average="macro"))
    assert rep["per_class"]["support"].sum() == 300
    assert D.split_scores(frame, list("abcd"), "all")["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))


def test_per_class_delta_pairs_head_and_full():
    from core.analysis.evaluation import scores_from_confusion

    head = scores_from_confusion(np.array([[5, 5], [4, 6]]), ["a", "b"])
    full = scores_from_confusion(np.array([[9, 1], [1, 9]]), ["a", "b"])
    t = D.per_class_delta(head, full)
    assert t["class"].tolist() == ["a", "b", "macro average"]
    assert np.allclose(t["F1 full"], [0.9, 0.9, 0.9])
    assert np.allclose(t["ΔF1"], t["F1 full"] - t["F1 head-only"])
    assert t["ΔF1"].iloc[-1] == pytest.approx(full["macro_f1"] - head["macro_f1"])
    with pytest.raises(ValueError):
        D.per_class_delta(head, scores_from_confusion(np.eye(2, dtype=int), ["a", "c"]))


def test_cell_positions_most_confident_first():
    frame = pd.DataFrame({"label": [6, 6, 6, 7, 6], "pred": [7, 7, 6, 7, 7], "confidence": [0.5, 0.9, 0.8, 0.7, 0.6],
                          "split": ["test", "test", "test", "test", "train"]})
    assert D.cell_positions(frame, 6, 7).tolist() == [1, 4, 0]
    assert D.cell_positions(frame, 6, 7, D.split_mask(frame, "test")).tolist() == [1, 0]
    assert D.default_split(frame) == "test"
    assert D.default_split(frame.assign(split="test")) == "all"


def test_selection_parsing():
    sel = {"points": [{"customdata": 5}, {"customdata": [7]}, {"customdata": {"0": 9}}, {"customdata": 5},
                      {"x": 1}], "box": [], "lasso": []}
    assert D.rows_from_selection(sel) == [5, 7, 9]
    assert D.rows_from_selection(None) == []
    assert D.cell_from_selection({"points": [{"customdata": [6, 7]}]}) == (6, 7)
    assert D.cell_from_selection({"points": [{"customdata": {"0": 1, "1": 2}}]}) == (1, 2)
    assert D.cell_from_selection({"points": []}) is None


def test_selection_csv_and_counts(catalog):
    data = D.read_run(_run(catalog, "full"))
    xy = D.MapXY(np.arange(data.n, dtype=np.float32), np.zeros(data.n, np.float32), {})
    csv = pd.read_csv(io.BytesIO(D.selection_csv(data, [3, 1], xy)))
    assert csv.columns.tolist() == ["id", "row", "split", "true_class", "predicted_class", "confidence", "x", "y",
                                    "redshift"]  # no ra/dec in this fixture: no position or link columns
    assert csv["id"].tolist() == ["gal000003", "gal000001"] and csv["x"].tolist() == [3.0, 1.0]
    counts = D.class_counts(data.frame, np.arange(50), True)
    assert counts["true"].sum() == 50 and counts["predicted"].sum() == 50


def test_knn_matches_brute_force():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 16)).astype(np.float32)
    idx, dist = D.knn_neighbours(X, 3, 5, "euclidean")
    brute = np.linalg.norm(X - X[3], axis=1)
    brute[3] = np.inf
    assert idx.tolist() == np.argsort(brute)[:5].tolist() and np.allclose(dist, np.sort(brute)[:5], atol=1e-4)
    idx, dist = D.knn_neighbours(X, 3, 5, "cosine", norms=D.row_norms(X))
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    cos = 1 - Xn @ Xn[3]
    cos[3] = np.inf
    assert idx.tolist() == np.argsort(cos)[:5].tolist() and 3 not in idx
    assert len(D.knn_neighbours(X[:3], 0, 10)[0]) == 2
    with pytest.raises(ValueError):
        D.knn_neighbours(X, 0, 3, "manhattan")


def _spec(fig):
    return json.loads(fig.to_json())


def legend(fig) -> list[str]:
    return [t.name for t in fig.data if t.showlegend is not False]


def test_map_figure_is_typed_and_highlights_in_grey(catalog):
    data = D.read_run(_run(catalog, "full"))
    xy = D.MapXY(np.random.default_rng(0).normal(size=data.n).astype(np.float32),
                 np.random.default_rng(1).normal(size=data.n).astype(np.float32), {})
    fig = F.map_figure(data, xy, "true class")
    spec = _spec(fig)
    assert all(t["type"] == "scattergl" for t in spec["data"])
    assert all(isinstance(t["marker"]["color"], str) for t in spec["data"])  # one colour per trace
    assert all("bdata" in t["x"] and "bdata" in t["customdata"] for t in spec["data"])  # binary arrays
    assert sum(len(t.x) for t in fig.data) == data.n
    assert legend(fig)[0].startswith("Disturbed") and len(legend(fig)) == 10
    # one trace per (true, predicted): hover names both classes without per-point strings
    tight_as_loose = [t for t in fig.data if "true: Unbarred Tight Spiral<br>predicted: Unbarred Loose" in t.hovertemplate]
    assert len(tight_as_loose) == 1
    rows = tight_as_loose[0].customdata[:, 0].astype(int)
    f = data.frame.set_index("row").loc[rows]
    assert (f["true"] == "Unbarred Tight Spiral").all() and (f["predicted"] == "Unbarred Loose Spiral").all()

    fig = F.map_figure(data, xy, "true class", highlight=[0], marked={"cell": np.array([1, 2])})
    assert legend(fig)[0].startswith("other classes") and legend(fig)[1].startswith("Disturbed")
    assert legend(fig)[-1] == "cell (2)" and len(legend(fig)) == 3
    grey = [t for t in fig.data if t.legendgroup == "other"]
    assert all(t.marker.color == F.GREY for t in grey)
    assert sum(len(t.x) for t in fig.data[:-1]) == data.n
    assert set(fig.data[-1].customdata[:, 0].astype(int)) == set(data.frame["row"].iloc[[1, 2]])

    numeric = F.map_figure(data, xy, "confidence")
    assert legend(numeric) == [] and sum(bool(t.marker.showscale) for t in numeric.data) == 1
    assert all(t.marker.color.dtype == np.float32 and t.marker.colorscale for t in numeric.data)
    for option in F.colour_options(data):
        F.map_figure(data, xy, option, highlight=[6, 7])


def test_confusion_figure_has_a_click_layer():
    cm = np.array([[5, 1], [2, 7]])
    fig = F.confusion_figure(cm, ["A", "B"], normalised=True, chosen=(1, 0))
    heat, click = fig.data
    assert heat.type == "heatmap" and click.customdata[2] == [1, 0] and len(click.x) == 4
    assert fig.layout.clickmode == "event+select" and len(fig.layout.shapes) == 1
    assert heat.text[1][0] == "22%"


def test_thumbnails():
    from PIL import Image

    png = thumbnail_png(np.zeros((300, 200, 3), np.uint8), 64)
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    assert Image.open(io.BytesIO(placeholder_png())).size == (96, 96)


def test_text_metadata_colours_as_categories():
    table = pd.DataFrame({"row": [0, 1, 2], "id": ["a", "b", "c"], "split": ["test"] * 3, "label": [0, 1, 0],
                          "meta_survey": pd.array(["north", "south", "north"], dtype="string"),
                          "meta_file": ["a.png", "b.png", "c.png"]})
    data = D.build_run_data({"class_names": ["A", "B"], "has_head": False}, table)
    assert F.colour_options(data) == ["true class", "survey"]
    xy = D.MapXY(np.zeros(3, np.float32), np.zeros(3, np.float32), {})
    assert legend(F.map_figure(data, xy, "survey")) == ["north (2)", "south (1)"]
