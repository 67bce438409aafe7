"""Atomic checkpoints: weights, optimizer, scheduler, DualState, rollout state, RNG, step.

A checkpoint is written into a hidden temp directory and renamed to ``checkpoints/step-N``
only when complete, so a crash mid-write never leaves a directory a resume would trust: a
``step-N`` counts only when it holds ``trainer_state.pt`` (written last), and a ``.step-*`` temp
directory left by a killed writer is never read and is removed by the next `save`.
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
    done = [p for p in root.glob("step-*")
            if p.name[len("step-"):].isdigit() and (p / _STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len("step-"):]))


def save(run_dir, step: int, model, optimizer, scheduler, dual, rollouts, batches,
         keep_last: int = 2, elapsed_s: float = 0.0) -> Path:
    """Write ``checkpoints/step-<step>`` atomically and drop all but the newest ``keep_last``.

    ``elapsed_s`` is the run's training time so far; a resumed run continues its clock from it,
    so ``summary.json``'s wall time covers the whole run, not just its last leg.
    """
    root = Path(run_dir) / "checkpoints"
    try:
        root.mkdir(parents=True, exist_ok=True)
        # Temp dirs of a writer that was killed mid-save: never complete, never resumed from.
        # One process writes a run's checkpoints (the main rank), so none of these is live.
        for stale in root.glob(".step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}-", dir=root))
    except OSError as err:
        raise _save_error(step, root, err) from err
    try:
        model.save_pretrained(tmp / "model")
        # trainer_state.pt is written last: its presence marks a complete checkpoint.
        torch.save({"step": step, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "dual": dual.state_dict(),
                    "rollouts": rollouts.state_dict() if rollouts is not None else None,
                    "data": batches.state_dict(), "rng": _rng_state(),
                    "elapsed_s": float(elapsed_s)},
                   tmp / _STATE)
        target = root / f"step-{step}"
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _save_error(step, root, err) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoints(run_dir)[:-max(1, keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _save_error(step: int, root: Path, err: OSError) -> OSError:
    return OSError(f"writing checkpoint step-{step} in {root} failed ({err}); nothing was left "
                   f"half-written. Free disk space, lower train.keep_last, or point the run dir "
                   f"elsewhere (hydra.run.dir=...)")


def resume_path(resume, run_dir) -> Path | None:
    """The checkpoint ``train.resume`` names, checked without loading anything.

    Cheap, so the trainer can call it with the other config checks, before any model loads.

    Args:
        resume: None/empty (start fresh), ``auto`` (the newest complete checkpoint in
            ``run_dir``, or a fresh start when there is none) or a ``step-N`` directory.
        run_dir: the run's directory.
    Returns the checkpoint directory, or None to start fresh. Raises FileNotFoundError naming
    ``train.resume`` and what to pass instead when a given path is not a complete checkpoint.
    """
    if not resume:
        return None
    if str(resume) == "auto":
        found = checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(str(resume)).expanduser()
    if (path / _STATE).is_file():
        return path
    # A run dir or its checkpoints/ dir is a likely slip: name the checkpoint the user meant.
    run = path.parent.parent if path.name.startswith("step-") else path
    found = checkpoints(run) or (checkpoints(path.parent) if path.name == "checkpoints" else [])
    if not path.exists():
        problem = "no such directory"
    elif path.is_dir() and (path / "model").is_dir():
        problem = f"an incomplete checkpoint (no {_STATE}: its save was interrupted)"
    else:
        problem = f"not a checkpoint directory (no {_STATE})"
    hint = (f"train.resume={found[-1]} (the newest complete one there)" if found else
            "train.resume=auto to continue the newest complete checkpoint in the run dir, or "
            "a checkpoints/step-N directory")
    raise FileNotFoundError(f"train.resume={resume}: {problem}. Use {hint}")


def maybe_resume(resume, run_dir, model, optimizer, scheduler, dual, rollouts,
                 batches) -> tuple[int, float]:
    """Restore state from ``resume`` (``auto`` = newest complete checkpoint in ``run_dir``,
    or a checkpoint path, see `resume_path`); return the step to continue from and the
    training seconds spent before it ((0, 0.0) when starting fresh; 0.0 for checkpoints
    written before the clock was saved)."""
    path = resume_path(resume, run_dir)
    if path is None:
        return 0, 0.0
    state = torch.load(path / _STATE, weights_only=False)
    _load_weights(model, path / "model")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    dual.load_state_dict(state["dual"])
    if rollouts is not None and state["rollouts"] is not None:
        rollouts.load_state_dict(state["rollouts"])
    batches.load_state_dict(state["data"])
    _set_rng_state(state["rng"])
    return int(state["step"]), float(state.get("elapsed_s", 0.0))


def _load_weights(model, path: Path) -> None:
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    else:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
