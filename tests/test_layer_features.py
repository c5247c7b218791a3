"""Per-layer features: stored from the same forward pass, for the four families,
checked against HF's own hidden states."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import core.extract.batches as batches
import core.extract.features as features
from core.extract import layers as lf

REPO = Path(__file__).resolve().parents[1]
DATASET = "synthetic:galaxy10?n=40&size=32&seed=3"


def cli(capsys, *args, cache):
    """The CLI in-process (its own exit codes and messages); a subprocess per call is slow here."""
    from core.__main__ import main

    capsys.readouterr()
    try:
        rc = main([*args, "--cache", str(cache)])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def test_parse_layers():
    assert lf.parse_layers("all", 4) == [1, 2, 3, 4]
    assert lf.parse_layers("last", 12) == [12]
    assert lf.parse_layers("1,4, 9-12", 12) == [1, 4, 9, 10, 11, 12]
    assert lf.parse_layers(None, 12) is None
    with pytest.raises(lf.UserError, match="blocks 1-12"):
        lf.parse_layers("0,13", 12)
    with pytest.raises(lf.UserError, match="stages 1-4"):
        lf.parse_layers("5", 4, "stage")
    with pytest.raises(lf.UserError, match="use all, last"):
        lf.parse_layers("first", 4)


def _hf_hidden_states(ckpt_dir, images: np.ndarray):
    """Hidden states straight from a fresh transformers model (our preprocessing, tested in test_models)."""
    import transformers as tf

    from core.models.load import load_checkpoint

    px = load_checkpoint(f"dir:{ckpt_dir}").preprocess(torch.from_numpy(images))
    model = tf.AutoModel.from_pretrained(ckpt_dir).eval()
    with torch.no_grad():
        return model(pixel_values=px, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("family", ["dinov2", "vit", "beit", "swinv2"])
def test_every_family_stores_its_blocks_from_one_pass(tmp_path, checkpoints, family, monkeypatch):
    torch.set_num_threads(1)
    name = family + "-head"
    calls = []
    real = batches.load_checkpoint

    def counting_load(*a, **kw):  # count forward passes through the backbone
        ck = real(*a, **kw)
        ck.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0] if i else None))
        return ck

    monkeypatch.setattr(batches, "load_checkpoint", counting_load)
    path, prov, hit = features.extract(DATASET, f"dir:{checkpoints[name]}", cache=tmp_path, progress=False,
                                       batch_size=16, layers="all", log=lambda *_: None)
    assert not hit
    assert len(calls) == 3  # 40 galaxies in batches of 16: one pass, not two
    lpath = lf.layers_path(path)
    lprov = lf.cached(lpath, [1, 2])
    assert lprov["features_run"] == path.stem and lprov["layers"] == [1, 2] and lprov["rows"] == 40
    unit, kinds = ("stage", ["mean"]) if family == "swinv2" else ("block", ["cls", "mean"])
    assert lprov["unit"] == unit and lprov["kinds"] == kinds
    table = pq.read_table(lpath)
    assert str(table.schema.field(lf.column(2, kinds[0])).type).startswith("fixed_size_list<element: halffloat>")
    assert table.column("id").to_pylist() == pq.read_table(path, columns=["id"]).column("id").to_pylist()

    # against HF's own hidden states on the same images (first 8 galaxies)
    from core.data.sources import open_dataset

    ds = open_dataset(DATASET)
    hs = _hf_hidden_states(checkpoints[name], ds.batch(np.arange(8)))
    for layer in (1, 2):
        h = hs[layer]
        expected = {"mean": h.mean(1)} if family == "swinv2" else {"cls": h[:, 0], "mean": h[:, 1:].mean(1)}
        for kind, want in expected.items():
            _, _, _, got = lf.read_layer(lpath, layer, kind)
            np.testing.assert_allclose(got[:8], want.numpy(), atol=2e-2, rtol=1e-2)

    # the last block's CLS, through the model's final LayerNorm, is the run's features
    if family in ("dinov2", "vit"):
        import transformers as tf

        ln = tf.AutoModel.from_pretrained(checkpoints[name]).layernorm
        _, _, _, last = lf.read_layer(lpath, 2, "cls")
        emb = np.stack(pq.read_table(path, columns=["embedding"]).column("embedding").to_numpy(zero_copy_only=False))
        with torch.no_grad():
            np.testing.assert_allclose(ln(torch.from_numpy(last)).numpy(), emb, atol=3e-2)


def test_cli_layers_listed_by_ls_and_cache_hit(tmp_path, checkpoints, capsys, monkeypatch):
    ck = f"dir:{checkpoints['dinov2']}"
    r = cli(capsys, "extract", "--dataset", DATASET, "--model", ck, "--layers", "2", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = json.loads(cli(capsys, "ls", "--json", cache=tmp_path).stdout)
    kinds = sorted(r["kind"] for r in runs)
    assert kinds == ["features", "layers"]
    feats = next(r for r in runs if r["kind"] == "features")
    layers = next(r for r in runs if r["kind"] == "layers")
    assert layers["key"] == feats["key"] and layers["layers"] == [2] and layers["rows"] == 40
    assert "blocks 2 of" in cli(capsys, "ls", cache=tmp_path).stdout
    # more blocks: computed again (one pass), the earlier block kept; then a cache hit
    r = cli(capsys, "extract", "--dataset", DATASET, "--model", ck, "--layers", "1", cache=tmp_path)
    assert r.returncode == 0 and not r.stdout.startswith("cache hit"), r.stderr
    assert lf.cached(lf.layers_path(feats["path"]), [1, 2])
    r = cli(capsys, "extract", "--dataset", DATASET, "--model", ck, "--layers", "all", cache=tmp_path)
    assert r.stdout.startswith("cache hit") and "per-layer features" in r.stdout
    # a cache hit with --layers resolves the checkpoint reference once (for hf: each is a hub-cache lookup)
    resolved, real = [], features.resolve
    monkeypatch.setattr(features, "resolve", lambda *a, **kw: resolved.append(a) or real(*a, **kw))
    assert features.extract(DATASET, ck, cache=tmp_path, layers="all", log=lambda *_: None)[2]
    assert len(resolved) == 1, resolved
    # a block the model does not have: one line, exit 2
    r = cli(capsys, "extract", "--dataset", DATASET, "--model", ck, "--layers", "1,7", cache=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "error: --layers '1,7': this checkpoint has blocks 1-2"
