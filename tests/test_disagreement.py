"""Two models on the same galaxies: the outcomes and the label suspects a user acts on."""
import numpy as np
import pandas as pd
import pytest

from core.analysis import disagreement as G
from core.errors import UserError


def frame(ids, labels, preds, confs):
    return pd.DataFrame({"id": ids, "label": labels, "pred": preds, "confidence": confs})


def test_outcomes_and_the_strongest_label_hint():
    ids = [f"g{i}" for i in range(6)]
    a = frame(ids, [0, 0, 1, 1, 2, 2], [0, 1, 1, 0, 1, 1], [0.9, 0.7, 0.9, 0.6, 0.95, 0.5])
    b = frame(ids[::-1], [2, 2, 1, 1, 0, 0],  # the same galaxies in another order
              [1, 1, 2, 1, 0, 0], [0.9, 0.9, 0.8, 0.9, 0.9, 0.9])
    j = G.join(a, b)
    by_id = j.set_index("id")
    assert by_id.loc["g0", "outcome"] == "both right"
    assert by_id.loc["g1", "outcome"] == "only A wrong"
    assert by_id.loc["g3", "outcome"] == "both wrong, different classes"  # A says 0, B says 2, label 1
    assert by_id.loc["g4", "outcome"] == "both wrong, same class" and by_id.loc["g4", "label_suspect"]
    assert by_id.loc["g5", "outcome"] == "both wrong, same class" and not by_id.loc["g5", "label_suspect"]  # A unsure
    s = G.summary(j)
    assert s["galaxies"] == 6 and s["label_suspects"] == 1 and sum(s[o] for o in G.OUTCOMES) == 6
    m = G.matrix(j, ["x", "y", "z"])
    assert m.to_numpy().sum() == 6 and m.loc["y", "y"] == 3  # g2, g4, g5: both said y
    cell = G.cell(j, 1, 1)
    assert cell.iloc[0]["id"] == "g4"  # the label suspect first


def test_runs_of_different_galaxies_are_refused():
    a = frame(["a"], [0], [0], [0.9])
    b = frame(["b"], [0], [0], [0.9])
    with pytest.raises(UserError, match="share no galaxy"):
        G.join(a, b)
    with pytest.raises(UserError, match="no predictions"):
        G.compare_runs({"key": "x", "has_head": False}, {"key": "y", "has_head": True})


def test_cached_runs_are_compared_on_the_dataset_classes(tmp_path):
    """Two cached runs, one whose head lists the classes in reverse (id2label): their predictions are
    compared as dataset classes, so identical answers agree everywhere; a generic run is refused."""
    from tests.cached_heads_fixtures import write_reversed_head_run

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 60)
    labels = rng.integers(0, 3, 60)
    rev = write_reversed_head_run(tmp_path, "rev", probs, labels)
    # "plain": its head columns are the dataset's order (probs reversed twice) and it records no id2label
    same = {**write_reversed_head_run(tmp_path, "plain", probs[:, ::-1].copy(), labels), "id2label": None}
    j = G.compare_runs(rev, same)
    assert len(j) == 60 and (j["pred_a"] == j["pred_b"]).all()
    assert (j["pred_a"].to_numpy() == probs.argmax(1)).all()
    generic = write_reversed_head_run(tmp_path, "gen", probs, labels, mode="generic")
    with pytest.raises(UserError, match="no predictions"):
        G.compare_runs(rev, generic)
