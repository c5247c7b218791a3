"""The arguments several verbs share, defined once: the cache folder, dataset and checkpoint
references, a cached run's key, the device. Each verb module adds them with these functions,
so every verb spells and documents them the same way."""
from __future__ import annotations

DATASETS = ("synthetic:galaxy10[?n=N&seed=S] | folder:DIR (images + labels.csv) | h5:PATH (Galaxy10_DECals.h5) | "
            "hf:OWNER/NAME | hf:DIR | fits:DIR (g,r,z FITS cutouts) | parquet:PATH (a catalogue with an image column)")
MODELS = ("hf:MODEL_ID | timm:hf_hub:OWNER/NAME | timm:DIR | dir:PATH (a save_pretrained folder) | "
          "demo:NAME (generic, head or full, after `python -m core demo`)")
CACHE_HELP = "cache folder (default: $EXPLORER_CACHE or ./cache)"
DEVICES = ("auto", "cuda", "cpu")


def add_cache(p, purpose: str | None = None):
    """``--cache DIR``: where runs are read and written."""
    p.add_argument("--cache", metavar="DIR", help=f"{purpose}: {CACHE_HELP}" if purpose else CACHE_HELP)


def add_dataset(p, required: bool = False, default: str | None = None, purpose: str | None = None,
                forms: str = DATASETS):
    """``--dataset REF``: a dataset reference; the help lists every accepted form (``forms``)."""
    text = f"{purpose}: {forms}" if purpose else forms
    if default is not None:
        text += f" (default {default})"
    p.add_argument("--dataset", metavar="REF", required=required, default=default, help=text)


def add_model(p, required: bool = False, purpose: str | None = None, forms: str = MODELS):
    """``--model REF``: a checkpoint reference; the help lists every accepted form (``forms``)."""
    p.add_argument("--model", metavar="REF", required=required, help=f"{purpose}: {forms}" if purpose else forms)


def add_run(p, purpose: str = "features key (see `python -m core ls`)", required: bool = False):
    """``--run KEY``: a cached features run by its key."""
    p.add_argument("--run", metavar="KEY", required=required, help=purpose)


def add_features_choice(p, purpose: str = "instead of --run"):
    """``--run KEY`` or ``--dataset REF --model REF``: which cached features run a verb reads."""
    add_run(p)
    add_dataset(p, purpose=f"the dataset the features were extracted from, with --model, {purpose}")
    add_model(p, purpose="the checkpoint the features were extracted with, with --dataset")


def chosen_features_run(args) -> dict:
    """The cached features run that ``add_features_choice``'s arguments name: ``--run KEY``, or ``--dataset``
    with ``--model``; a one-line UserError when neither is given."""
    from core.analysis.maps.store import features_run, find_features
    from core.data.sources import normalize_ref
    from core.errors import UserError

    if args.run:
        return features_run(args.run, args.cache)
    if args.dataset and args.model:
        return find_features(normalize_ref(args.dataset), normalize_ref(args.model), args.cache)
    raise UserError("say which features run: --run KEY, or --dataset and --model")


def add_device(p):
    """``--device auto|cuda|cpu``."""
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto (default): cuda when available, else cpu")
