import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO.parent / "shared" / "data" / "galaxyzoo-decals-examples"


@pytest.fixture
def examples_dir():
    if not (EXAMPLES / "labels.csv").is_file():
        pytest.skip(f"real DECaLS examples not found at {EXAMPLES} (shared/ data folder absent)")
    return EXAMPLES


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Tiny random checkpoints of every family, with and without a 10-class head."""
    from tests.checkpoint_fixtures import FAMILIES, make_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for fam in FAMILIES:
        out[fam] = make_checkpoint(root, fam)
        out[fam + "-head"] = make_checkpoint(root, fam, num_labels=10)
    return out
