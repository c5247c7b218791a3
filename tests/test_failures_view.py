"""The Failures view through AppTest on the dashboard fixture cache: suspicious labels with their
suggested class, failure slices as sentences that ring their galaxies, calibration, and two models
side by side; and the CSV an astronomer sends back for relabelling."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from core.analysis.label_issues import label_issues
from core.store import cache as store
from dashboard import data as D
from dashboard.views.failures import suspects_csv
from tests.test_dashboard import charts, ok, run_app, texts, view


@pytest.fixture(scope="module")
def cache(dashboard_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE", str(dashboard_cache))
        yield dashboard_cache


def full_run(cache):
    return next(r for r in store.list_runs(cache) if r["kind"] == "features" and r.get("mode") == "full")


@pytest.mark.slow
def test_the_failures_view_answers_its_four_questions(cache):
    at = view(run_app(), "Failures")
    page = texts(at)
    assert "labels flagged" in page
    issues = label_issues(full_run(cache)["key"], cache=cache)
    top = issues.iloc[0]
    assert f"given {top['given']} → suggested {top['suggested']}" in page  # the first card says what to relabel
    assert "Calibration: can its confidence be trusted?" in page and "ECE" in page
    assert any(m.label.startswith("both wrong, same class") for m in at.metric)
    # a failure slice opens: its sentence is a radio option, its galaxies are ringed on the slice map
    slices = at.radio(key="slice")
    assert slices.options and "wrong" in slices.options[0]
    ringed = [t for c in charts(at) for t in c["data"] if str(t.get("name", "")).startswith("slice (")]
    assert ringed, "the chosen slice is ringed on the map"
    n = int(slices.options[0].split(", ")[-1].split(" galaxies")[0].replace(",", ""))
    assert ringed[0]["name"] == f"slice ({n:,})"  # exactly the slice's galaxies


@pytest.mark.slow
def test_disagreement_cell_and_url_state(cache):
    at = run_app(query={"view": "Failures", "versus_a": "Unbarred Tight Spiral", "versus_b": "Unbarred Tight Spiral"})
    at = view(at, "Failures")
    assert at.selectbox(key="versus_a").value == "Unbarred Tight Spiral"
    assert "galaxies" in texts(at)


def test_the_relabelling_csv(cache):
    run = full_run(cache)
    issues = label_issues(run["key"], cache=cache)
    data = D.read_run(run)
    table = pd.read_csv(io.BytesIO(suspects_csv(data, issues, "ls-dr10")))
    assert list(table.columns[:5]) == ["id", "given_label", "suggested_label", "score", "flagged"]
    assert len(table) == len(issues) and table["id"].astype(str).tolist() == issues["id"].astype(str).tolist()
    assert np.all(np.diff(table.loc[~table["flagged"], "score"].to_numpy()) <= 1e-9)  # most suspicious first


@pytest.mark.slow
def test_a_large_run_is_analysed_when_asked(cache, monkeypatch):
    import dashboard.views.failures as F

    monkeypatch.setattr(F, "COMPUTE_ON_VIEW", 10)  # the fixture's 300 galaxies count as large
    from core.analysis.label_issues import cached_label_issues, label_issues_path

    key = full_run(cache)["key"]
    path, _ = label_issues_path(key, cache)
    if path.exists():
        path.unlink()
    at = view(run_app(), "Failures")
    assert "Analyse this run now" in [b.label for b in at.button]
    assert f"python -m core failures --run {key}" in texts(at)
    assert cached_label_issues(key, cache=cache) is None  # nothing computed behind the user's back
