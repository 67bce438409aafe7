"""The card `pdalign-export` writes beside an exported model (``pdalign_export.json``: the run,
the checkpoint, the certificate, the format), and what is read back from it."""

from __future__ import annotations

import json
from pathlib import Path

CARD_JSON = "pdalign_export.json"


def is_merged_export(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` holds a ``pdalign-export --merge`` model (its card says
    ``"format": "merged"``); False for an adapter export, any other directory, a hub id or an
    unreadable card."""
    card = Path(str(model_dir)) / CARD_JSON
    try:
        return json.loads(card.read_text(encoding="utf-8")).get("format") == "merged"
    except (OSError, ValueError, AttributeError):
        return False
