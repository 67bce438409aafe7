"""Atomic checkpoints: weights, optimizer, scheduler, DualState, rollout state, RNG, step.

A checkpoint is written into a hidden temp directory and renamed to ``checkpoints/step-N``
only when complete, so a crash mid-write never leaves a directory a resume would trust.
``keep_last`` rotates old ones out.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

_STATE = "trainer_state.pt"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / _STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save(run_dir, step: int, model, optimizer, scheduler, dual, rollouts, batches,
         keep_last: int = 2) -> Path:
    """Write ``checkpoints/step-<step>`` atomically and drop all but the newest ``keep_last``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}-", dir=root))
    try:
        model.save_pretrained(tmp / "model")
        torch.save({"step": step, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "dual": dual.state_dict(),
                    "rollouts": rollouts.state_dict() if rollouts is not None else None, "data": batches.state_dict(), "rng": _rng_state()},
                   tmp / _STATE)
        target = root / f"step-{step}"
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"writing checkpoint step-{step} in {root} failed ({err}); nothing was "
                      f"left half-written. Free disk space or point the run dir elsewhere "
                      f"(hydra.run.dir=...)") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoints(run_dir)[:-max(1, keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def maybe_resume(resume, run_dir, model, optimizer, scheduler, dual, rollouts, batches) -> int:
    """Restore state from ``resume`` (``auto`` = newest complete checkpoint in ``run_dir``,
    or a checkpoint path); return the step to continue from (0 when starting fresh)."""
    if not resume:
        return 0
    if resume == "auto":
        found = checkpoints(run_dir)
        if not found:
            return 0
        path = found[-1]
    else:
        path = Path(resume)
        if not (path / _STATE).is_file():
            raise FileNotFoundError(f"train.resume={resume}: no complete checkpoint there "
                                    f"(missing {_STATE}); use train.resume=auto or a "
                                    f"checkpoints/step-N directory")
    state = torch.load(path / _STATE, weights_only=False)
    _load_weights(model, path / "model")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    dual.load_state_dict(state["dual"])
    if rollouts is not None and state["rollouts"] is not None:
        rollouts.load_state_dict(state["rollouts"])
    batches.load_state_dict(state["data"])
    _set_rng_state(state["rng"])
    return int(state["step"])


def _load_weights(model, path: Path) -> None:
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    else:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
