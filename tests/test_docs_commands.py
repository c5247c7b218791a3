"""Every command in the README and docs/ runs as written.

The fenced ```bash blocks are read the way a user copies them (continuation lines joined, comments
dropped). What can run here, offline and in seconds, runs; every other `python -m core` command is
parsed by the real CLI parser, so a renamed verb or flag fails here; a `python bench/...` script must
exist; the rest is skipped for a stated reason (the user's data, the network, a GPU, a cluster, or
minutes of work that other tests already cover).
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# commands that cannot run here, and why (matched by their start)
NOT_HERE = {
    "make demo": "builds the demo and serves it until stopped: CI's demo tests build it",
    "make test": "is this very test suite",
    "make serve": "serves until stopped: the browser tests start the app themselves",
    "streamlit run": "serves until stopped: the browser tests start the app themselves",
    "bash bench/gpu_session.sh": "needs a CUDA GPU",
    "ray start": "starts a Ray cluster node (tests/test_ray.py runs a local cluster)",
    "ray stop": "stops a Ray cluster node",
    "ray get-auth-token": "writes the user's ~/.ray/auth_token (tests/test_ray_cluster.py starts a real cluster)",
    "export RAY_AUTH_MODE": "changes the shell (the recipe is checked by hand: docs/SCALE.md)",
    "pip install": "changes the environment",
    ". .venv/bin/activate": "changes the shell",
    "time python -m core demo": "minutes on a fresh cache: tests/test_demo.py builds the demo",
}
# `python -m core` commands that run here for real (offline, seconds)
RUN_HERE = ("ls", "--help")


def commands():
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
                if line and not line.startswith(("for ", "done", "NAME=", "D=")):
                    out.append(pytest.param(line, id=f"{doc.name}:{line[:60]}"))
    return out


# values for the shell variables the documented loops set
VARIABLES = {"D": "hf:matthieulel/galaxy10_decals", "BASE": "facebook/dinov2-base", "NAME": "dinov2-base", "LR": "5e-5"}


def words(line: str) -> list[str]:
    line = re.sub(r"\$\{?(\w+)[^}\s]*\}?", lambda m: VARIABLES.get(m.group(1), m.group(1)), line)
    return shlex.split(line.split(";")[-1].strip())


@pytest.mark.parametrize("line", commands())
def test_documented_command(line, tmp_path):
    for start, why in NOT_HERE.items():
        if line.startswith(start):
            pytest.skip(f"`{start}` {why}")
    argv = words(line)
    if argv[:2] == ["PYTHONPATH=.", "python"]:
        argv = argv[1:]
    if argv[:3] == ["python", "-m", "core"]:
        args = argv[3:]
        if not args or args[0] in RUN_HERE or args[-1] == "--help":
            r = subprocess.run([sys.executable, "-m", "core", *args, *(["--cache", str(tmp_path)] if args[:1] == ["ls"] else [])],
                               cwd=REPO, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-2000:]
            return
        try:  # parse only: the real parser, every verb and flag as written; nothing runs
            parsed = build_parser(args[0]).parse_args(args)
        except SystemExit:
            pytest.fail(f"the CLI does not accept: {line}")
        assert callable(getattr(parsed, "func", None))
        return
    if argv[0] == "python" and argv[1].startswith("bench/"):
        assert (REPO / argv[1]).is_file(), f"{argv[1]} does not exist"
        return
    pytest.fail(f"a documented command this test does not know how to check: {line!r}; "
                "run it here, or add it to NOT_HERE with the reason it cannot run")
