"""Shared fixtures: everything here is offline and built once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded SmolLM2-135M-Instruct tokenizer (real vocab and chat template), offline."""
    from pdalign.models import load_tokenizer

    return load_tokenizer("tiny")


import os  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

FIXTURES = Path(__file__).parent / "fixtures"
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def compose(overrides: list[str]):
    """Compose the shipped Hydra config with ``overrides``, exactly as pdalign-train does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def tiny_overrides(*extra: str) -> list[str]:
    """A fast tiny-model run on the fixture pairs, no W&B."""
    return ["model=tiny", f"data.train={FIXTURES / 'pairs.jsonl'}", "data.heldout=null",
            "logging.wandb=false", "train.batch_size=4", "train.warmup_steps=0",
            "train.lr=5e-3", *extra]
