"""The arguments verbs share are defined once (core/cli/args.py), so every verb's --help
names every dataset and checkpoint form the engine accepts, and spells --cache the same."""
import ast
import re
from pathlib import Path

import pytest

from core.cli.main import VERBS, build_parser

ROOT = Path(__file__).resolve().parents[1]
DATASET_FORMS = ("synthetic:", "folder:", "h5:", "hf:", "fits:", "parquet:")
MODEL_FORMS = ("hf:", "timm:", "dir:", "demo:")
SHARED = ("--cache", "--dataset", "--model", "--run", "--device")


def _help(verb: str, capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser(verb).parse_args([verb, "--help"])
    return capsys.readouterr().out


def _option_help(text: str, option: str) -> str:
    """The help text of ``option`` in a --help page: its line and the indented lines under it
    (argparse wraps anywhere, so whitespace is collapsed)."""
    m = re.search(rf"^  {option}\b(.*?)(?=^  -|^\S|\Z)", text, re.M | re.S)
    return re.sub(r"\s+", " ", m.group(1)) if m else ""


@pytest.mark.parametrize("verb", ["extract", "finetune", "pretrain", "project", "anomalies", "evaluate"])
def test_every_dataset_form_is_named_where_a_verb_takes_any_dataset(verb, capsys):
    dataset = _option_help(_help(verb, capsys), "--dataset")
    missing = [f for f in DATASET_FORMS if f not in dataset]
    assert not missing, f"{verb} --dataset help lacks {missing}: {dataset!r}"


@pytest.mark.parametrize("verb", ["extract", "finetune", "project", "anomalies", "evaluate"])
def test_every_checkpoint_form_is_named_where_a_verb_takes_any_checkpoint(verb, capsys):
    model = _option_help(_help(verb, capsys), "--model")
    missing = [f for f in MODEL_FORMS if f not in model]
    assert not missing, f"{verb} --model help lacks {missing}: {model!r}"


def test_every_verb_takes_the_cache_with_the_same_words(capsys):
    helps = {verb: _option_help(_help(verb, capsys), "--cache") for verb in VERBS}
    assert all("$EXPLORER_CACHE or ./cache" in h for h in helps.values()), helps


def test_shared_arguments_are_defined_only_in_core_cli_args():
    """A verb module that adds --cache (or --dataset, --model...) itself drifts from the others."""
    offenders = []
    for path in sorted((ROOT / "core" / "cli").glob("*.py")):
        if path.name == "args.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value in SHARED):
                offenders.append(f"{path.name}:{node.lineno} {node.args[0].value}")
    assert not offenders, offenders
