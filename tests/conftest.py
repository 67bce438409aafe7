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
            "train.lr=5e-3", "eval.prompts_per_set=2", "eval.max_new_tokens=4", *extra]


def pdalign_train(args: list[str], *, log: Path | None = None, timeout: float = 300):
    """Run the real ``pdalign-train`` CLI in a subprocess (one CPU thread, offline, no W&B).

    Returns the finished CompletedProcess (text stdout/stderr), or, given ``log`` (a file that
    takes stdout and stderr), the running Popen without waiting.
    """
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("pdalign-train")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "pdalign.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    cwd = Path(__file__).resolve().parent.parent
    if log is not None:
        with open(log, "w") as out:  # a file, not a pipe: nobody reads it until the end
            return subprocess.Popen(cmd + args, env=env, cwd=cwd, stdout=out,
                                    stderr=subprocess.STDOUT)
    return subprocess.run(cmd + args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)

# CI runs the property tests derandomized (a fixed example sequence), so a green build stays
# green; locally hypothesis explores new examples on every run.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
