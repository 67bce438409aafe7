"""Shared fixtures: everything here is offline and built once per test session."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

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
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "pdalign.cli.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    cwd = Path(__file__).resolve().parent.parent
    if log is not None:
        with open(log, "w") as out:  # a file, not a pipe: nobody reads it until the end
            return subprocess.Popen(cmd + args, env=env, cwd=cwd, stdout=out,
                                    stderr=subprocess.STDOUT)
    return subprocess.run(cmd + args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)

# ---- precision: every test says which dtype it is about --------------------------------------
# A test of algebra (two code paths that must agree, a gradient, a recurrence) pins
# train.dtype=fp32 and keeps a tight tolerance. A test of the default path runs train.dtype=auto
# and takes the tolerance of the dtype that actually ran: bf16 on AMX / AVX512-BF16 CPUs, fp32
# on AVX2-only ones, or what $PDALIGN_TEST_DTYPE forces (`PDALIGN_TEST_DTYPE=bf16 make test`
# runs the suite as a bf16 machine would).
FP32 = "train.dtype=fp32"
BF16 = "train.dtype=bf16"


def auto_dtype():
    """The dtype ``train.dtype=auto`` resolves to on this machine (and under the forcing env)."""
    from pdalign.policy.precision import resolve_dtype

    return resolve_dtype("auto", "cpu")


def rel_tol(dtype) -> float:
    """Relative tolerance for a value computed by a few training steps in ``dtype``.

    fp32 keeps 24 mantissa bits: two orders of a sum agree to ~1e-6; 1e-4 leaves room for a
    few optimizer steps. bf16 keeps 8 bits, so one rounding is 2^-8 = 0.4%; a loss after a few
    steps through 2 layers carries several, so 2^-5 (3%) bounds it.
    """
    import torch

    return {torch.float32: 1e-4, torch.bfloat16: 2.0 ** -5}[dtype]


def pytest_report_header(config):
    import os

    from pdalign.policy.precision import FORCE_DTYPE_ENV, cpu_has_fast_bf16

    forced = os.environ.get(FORCE_DTYPE_ENV)
    how = f"forced by {FORCE_DTYPE_ENV}={forced}" if forced else (
        "CPU flags: " + ("native bf16" if cpu_has_fast_bf16() else "no native bf16"))
    return f"pdalign: train.dtype=auto runs {auto_dtype()} here ({how})"


def assert_tree_close(got, want, *, rel: float, abs: float = 0.0, path: str = "") -> None:
    """``got == want`` for nested JSON values, floats within (rel, abs); ints, strings, None,
    keys and lengths exactly. For committed results recomputed on another CPU or thread count:
    floating point sums differ in their last bits there."""
    import math

    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (path, set(got) ^ set(want))
        for key in want:
            assert_tree_close(got[key], want[key], rel=rel, abs=abs, path=f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_tree_close(g, w, rel=rel, abs=abs, path=f"{path}[{i}]")
    elif isinstance(want, float) or isinstance(got, float):
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=rel,
                                                              abs_tol=abs), (path, got, want)
    else:
        assert got == want, (path, got, want)


# CI runs the property tests derandomized (a fixed example sequence), so a green build stays
# green; locally hypothesis explores new examples on every run.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


# ---- fixtures shared by the test modules -----------------------------------------------------

@pytest.fixture(scope="session")
def tokenizer():
    """The embedded SmolLM2-135M-Instruct tokenizer (real vocab and chat template), offline."""
    from pdalign.policy.models import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer) of the 2-layer tiny Llama, one fresh copy per test module."""
    from pdalign.policy.models import load_model

    return load_model("tiny")


def scripted_decode(rows, eos: int):
    """A stand-in for `pdalign.policy.sampling.decode` that writes the given new tokens (one
    row per prompt of a batch, cut after the first ``eos``), for tests of what is computed from
    samples with known lengths."""
    def decode(model, input_ids, attention_mask, **kwargs):
        out = []
        for row in rows[:len(input_ids)].tolist():
            out.append(row[:row.index(eos) + 1] if eos in row else row)
        return out

    return decode


@pytest.fixture
def prompt_file(tmp_path):
    """A JSONL prompt set of 10 short questions."""
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n"
                            for i in range(10)))
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command or the trainer gets as far as loading a model: proves a bad
    input was caught before it."""
    import pdalign.training.build

    def forbidden(*args, **kwargs):
        raise AssertionError("a model loaded before the bad input was caught")

    monkeypatch.setattr(pdalign.training.build, "load_model", forbidden)


def script_json(script: Path, timeout: float) -> dict:
    """Run an experiments/ script with ``--json`` as users and outside checks do (one thread),
    and parse its last stdout line."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(script), "--json"], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def git_show_or_skip(root: Path, rev: str, relpath: str) -> str:
    """``git show rev:relpath`` in the checkout at ``root``; skips the test where git or the
    revision is missing (no git, a shallow clone)."""
    try:
        shown = subprocess.run(["git", "show", f"{rev}:{relpath}"], cwd=root,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"git is unavailable: {err}")
    if shown.returncode != 0:
        pytest.skip(f"git show {rev}:{relpath} failed (a shallow clone?): {shown.stderr.strip()}")
    return shown.stdout
