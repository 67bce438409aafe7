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


def save(run_dir, state, keep_last: int = 2) -> Path:
    """Write ``checkpoints/step-<state.step>`` atomically and drop all but the newest
    ``keep_last``.

    Args:
        run_dir: the run's directory.
        state: a `pdalign.trainer.TrainState`: its model goes in ``model/`` (save_pretrained),
            its ``state_dict()`` (optimizer, scheduler, dual, rollouts, data position, step, the
            run's clock ``elapsed_s``) with the RNG states in ``trainer_state.pt``. A resumed run
            continues its clock, so ``summary.json``'s wall time covers every leg.
        keep_last: complete checkpoints kept.
    """
    step = int(state.step)
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
        state.model.save_pretrained(tmp / "model")
        # trainer_state.pt is written last: its presence marks a complete checkpoint.
        torch.save({**state.state_dict(), "rng": _rng_state()}, tmp / _STATE)
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


def resume(resume, run_dir, state) -> bool:
    """Restore ``state`` (a `pdalign.trainer.TrainState`) and the RNG from the checkpoint
    ``resume`` names (``auto`` = the newest complete one in ``run_dir``, or a path; see
    `resume_path`). Returns False, touching nothing, when starting fresh."""
    path = resume_path(resume, run_dir)
    if path is None:
        return False
    saved = torch.load(path / _STATE, weights_only=False)
    _load_weights(state.model, path / "model")
    state.load_state_dict(saved)
    _set_rng_state(saved["rng"])
    return True


def _load_weights(model, path: Path) -> None:
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    else:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
