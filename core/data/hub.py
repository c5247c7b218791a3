"""Local snapshots of Hugging Face hub repos: the HF cache first, then the network,
failing fast offline (no long retry loop)."""
from __future__ import annotations

import os
from pathlib import Path

ETAG_TIMEOUT = 5  # seconds; the user's HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT win
DOWNLOAD_TIMEOUT = 10


def _fail_fast() -> float:
    """The etag timeout to pass, after making the download timeout effective.

    huggingface_hub reads its timeout variables once, at import, so setting them in
    os.environ here would change nothing: the etag timeout is passed explicitly and
    the download timeout set on its constants module, which it reads per request.
    """
    from huggingface_hub import constants

    if not os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT"):
        constants.HF_HUB_DOWNLOAD_TIMEOUT = DOWNLOAD_TIMEOUT
    return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or ETAG_TIMEOUT)


def snapshot(repo_id: str, patterns: list[str], repo_type: str | None = None) -> Path:
    """Local folder holding ``patterns`` of ``repo_id``; raises whatever the hub raised
    when it is neither cached nor reachable (callers turn that into a SourceError)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    return Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=patterns, etag_timeout=_fail_fast()))
