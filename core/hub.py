"""Local snapshots of Hugging Face hub repos: the HF cache first, then the network,
failing fast offline (no long retry loop)."""
from __future__ import annotations

import os
from pathlib import Path


def snapshot(repo_id: str, patterns: list[str], repo_type: str | None = None) -> Path:
    """Local folder holding ``patterns`` of ``repo_id``; raises whatever the hub raised
    when it is neither cached nor reachable (callers turn that into a SourceError)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    return Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=patterns))
