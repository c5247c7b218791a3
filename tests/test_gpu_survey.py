"""The survey-size GPU script (bench/gpu_session.sh survey -> bench/gpu_survey.py) runs
end to end at tiny sizes on the CPU (--smoke), without the packages the GPU machine
lacks, and reports every stage: what a GPU session relies on before it spends its time."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the GPU machine has torch, transformers, timm, pandas, pyarrow, and none of these
MISSING = ["streamlit", "datasets", "umap", "openTSNE", "ray", "sklearn", "scipy"]


@pytest.mark.slow
def test_survey_smoke_runs_every_stage_without_the_missing_packages(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import sys\nfor m in %r:\n    sys.modules[m] = None\n" % MISSING)
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"), SURVEY_RESULTS=str(tmp_path),
               PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{ROOT}", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(["bash", "bench/gpu_session.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    log = (tmp_path / "out" / "session.log").read_text()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for step in ("matmul", "survey_tsne", "pipeline", "tsne10m"):
        assert f"=== {step} rc=0" in log, log[-3000:]
    rows = json.loads((tmp_path / "gpu-survey-cpu-smoke.json").read_text())
    by = {(r["stage"], r["what"]): r for r in rows}
    assert not [r for r in rows if r["what"] == "FAILED"], rows
    assert {w for s, w in by if s == "matmul"} == {"tf32", "bf16", "fp32"}
    assert all(by[("matmul", w)]["tflops"] > 0 for w in ("tf32", "bf16", "fp32"))
    for what in ("first call", "warm", "warm, no CUDA graphs", "whole"):
        assert by[("tsne", what)]["knn_preservation"] > 0.1 and "layout" in by[("tsne", what)]["stages"]
    cert = by[("tsne", "knn tf32 certificate")]
    assert cert["same_as_fp32"] > 0.999
    assert by[("tsne", "openTSNE (CPU)")]["skipped"] == "openTSNE is not installed here"
    assert by[("tsne10m", "approximate knn")]["recall_at_10"] > 0.5
    assert by[("tsne10m", "whole")]["knn_preservation"] > 0.1
    summary = by[("pipeline", "summary")]
    assert summary["bounded_by"] in summary["stages"]
    assert {"extract", "read features", "t-SNE", "outliers: kNN"} <= set(summary["stages"])
    assert by[("pipeline", "extract (local engine, sharded)")]["sharded"] is True
    assert "sklearn" in by[("pipeline", "outliers: isolation forest (CPU)")]["skipped"]
