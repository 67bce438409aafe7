"""Atomic checkpoints that survive scale-out: weights, optimizer, scheduler, every rank's RNG and
training state (DualState, rollouts, batch stream, constraints), step.

Layout of ``checkpoints/step-N``:

- ``state/``: `accelerate.Accelerator.save_state`: the optimizer and scheduler (under
  ``train.sharding=fsdp2``, ``state/sharded/``: each rank's shard of the adapter and the
  optimizer state through torch.distributed.checkpoint, the scheduler in the training state;
  under accelerate's FSDP the optimizer state and the model as its shards), each rank's Python,
  NumPy, torch and CUDA RNG (``random_states_<rank>.pkl``), and ``custom_checkpoint_0.pkl``:
  every rank's `pdalign.training.trainer.TrainState` (`PerRank`), since accelerate writes registered
  objects from the main process alone and each rank samples its own rollouts;
- ``model/``: the policy as ``save_pretrained`` (the adapter of a LoRA run, not the frozen base),
  what ``pdalign-export`` / ``-eval`` / ``-generate`` read and what a resume loads weights from
  (under FSDP, from the shards in ``state/``); a save-state hook writes it in place of
  accelerate's whole-module ``model.safetensors``;
- ``trainer_state.pt``: rank 0's TrainState and the world size, for readers; written last, its
  presence marks a complete checkpoint.

Every rank writes into one hidden temp directory that the main process renames to ``step-N``
only once all ranks are done, so a crash mid-write never leaves a directory a resume would
trust; a ``.step-*`` temp directory left by a killed writer is never read and is removed by the
next `save`. ``keep_last`` rotates old ones out. The run dir must be on a file system every
node sees (one machine, or a cluster's shared file system).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, send_to_device
from safetensors.torch import load_file

from pdalign.training import sharding

_STATE = "trainer_state.pt"
_SHARDS = "sharded"  # under state/: FSDP2's torch.distributed.checkpoint files


class PerRank:
    """Each process's ``obj.state_dict()`` in one checkpoint entry, for
    `accelerate.Accelerator.register_for_checkpointing`.

    accelerate saves a registered object's state from the main process only and loads that one
    copy on every rank. Rank k's rollout RNG and samples, its pair sets' order and its rollout
    baselines differ from rank 0's, so ``state_dict`` gathers every rank's (a collective: all
    ranks call it, as ``save_state`` does) and ``load_state_dict`` gives each rank its own.

    Args:
        obj: what is checkpointed (a TrainState: lambda and the step are the same on every rank,
            stored once per rank at the cost of a few numbers).
        accelerator: the run's Accelerator (its rank and number of processes).
    """

    def __init__(self, obj, accelerator):
        self.obj, self.accelerator = obj, accelerator

    def state_dict(self) -> dict:

        mine = send_to_device(self.obj.state_dict(), "cpu")  # rank 0 must not unpickle GPU k's
        return {"world_size": self.accelerator.num_processes, "ranks": gather_object([mine])}

    def load_state_dict(self, state: dict) -> None:
        saved, n = int(state["world_size"]), self.accelerator.num_processes
        if saved != n:
            raise ValueError(_world_size_error(saved, n))
        self.obj.load_state_dict(state["ranks"][self.accelerator.process_index])


def register(accelerator, state) -> None:
    """Make ``accelerator.save_state`` / ``load_state`` cover the run: every rank's ``state``
    (`PerRank`) beside the optimizer, scheduler and RNG accelerate saves itself, and the policy's
    weights as ``model/`` (save_pretrained) instead of the whole module. Call once, after
    ``accelerator.prepare`` and before `resume` / `save`."""
    accelerator.register_for_checkpointing(PerRank(state, accelerator))
    if getattr(state, "sharded", False):  # FSDP2 applied by pdalign: accelerate holds no model
        accelerator.register_save_state_pre_hook(
            lambda models, weights, out: _save_fsdp2(accelerator, state, Path(out)))
        accelerator.register_load_state_pre_hook(
            lambda models, in_dir: sharding.load_sharded(state.model, state.optimizer,
                                                         Path(in_dir) / _SHARDS))
        return
    accelerator.register_save_state_pre_hook(
        lambda models, weights, out: _save_weights(accelerator, models, weights, Path(out)))
    accelerator.register_load_state_pre_hook(
        lambda models, in_dir: _load_weights_hook(accelerator, models, Path(in_dir)))


def _save_fsdp2(accelerator, state, out: Path) -> None:
    """save_state's pre-hook under FSDP2 (`pdalign.training.sharding`), on every rank: the
    adapter gathered in full as ``out/../model`` (what export, eval and generate read), and each
    rank's shard of the adapter and the optimizer state as ``out/sharded`` (what resume reads).
    Both are collectives."""
    full = sharding.full_state_dict(state.model)
    if accelerator.is_main_process:
        state.model.save_pretrained(out.parent / "model", state_dict=full)
    sharding.save_sharded(state.model, state.optimizer, out / _SHARDS)


def _sharded(accelerator) -> bool:

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _save_weights(accelerator, models, weights, out: Path) -> None:
    """save_state's pre-hook, on every rank: the policy as ``out/../model`` (save_pretrained).

    Without sharding, accelerate would also write the whole module (a LoRA run's frozen base
    too) as ``model.safetensors``; emptying ``weights`` leaves ``model/`` the only copy. Under
    FSDP / ZeRO-3 accelerate writes the shards itself (resume reads them) and the full weights
    for ``model/`` are gathered here (a collective, so on every rank)."""
    module = models[0]  # the prepared PolicyForward; its .model is the policy
    full = accelerator.get_state_dict(module) if _sharded(accelerator) else None
    weights.clear()
    if accelerator.is_main_process:
        policy = accelerator.unwrap_model(module).model
        if full is None:
            policy.save_pretrained(out.parent / "model")
        else:  # the module's keys are "model.<the policy's key>"
            policy.save_pretrained(out.parent / "model", state_dict={
                k[len("model."):]: v for k, v in full.items() if k.startswith("model.")})


def _load_weights_hook(accelerator, models, in_dir: Path) -> None:
    """load_state's pre-hook: without sharding, the policy's weights come from ``model/``
    (accelerate then loads no module itself); under FSDP / ZeRO ``models`` is empty here and
    accelerate has loaded the shards."""
    for module in models:
        _load_weights(accelerator.unwrap_model(module).model, in_dir.parent / "model")
    models.clear()


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*")
            if p.name[len("step-"):].isdigit() and (p / _STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len("step-"):]))


def save(run_dir, state, accelerator, keep_last: int = 2) -> Path:
    """Write ``checkpoints/step-<state.step>`` atomically and drop all but the newest
    ``keep_last``. Every rank calls it (FSDP gathers and the per-rank state are collectives).

    Args:
        run_dir: the run's directory.
        state: the `pdalign.training.trainer.TrainState` (registered with `register`): its
            ``state_dict()`` (dual, rollouts, data position, constraints, step, the run's clock
            ``elapsed_s``; a resumed run continues its clock, so ``summary.json``'s wall time
            covers every leg) is saved for every rank.
        accelerator: the run's Accelerator.
        keep_last: complete checkpoints kept.
    """

    step, main = int(state.step), accelerator.is_main_process
    root = Path(run_dir) / "checkpoints"
    tmp = None
    if main:
        try:
            root.mkdir(parents=True, exist_ok=True)
            # Temp dirs of a writer that was killed mid-save: never complete, never resumed
            # from. The main process makes this save's temp dir, so none of these is live.
            for stale in root.glob(".step-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}-", dir=root))
        except OSError as err:  # the other ranks stop with it: the launcher ends the job
            raise _save_error(step, root, err) from err
    tmp = broadcast_object_list([tmp])[0]  # every rank writes into the main process's temp dir
    try:
        accelerator.save_state(tmp / "state")
        accelerator.wait_for_everyone()  # every rank's shards and RNG are on disk
        if main:
            # trainer_state.pt is written last: its presence marks a complete checkpoint.
            torch.save({**state.state_dict(), "world_size": accelerator.num_processes},
                       tmp / _STATE)
            target = root / f"step-{step}"
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
    except OSError as err:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _save_error(step, root, err) from err
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if main:
        for old in checkpoints(run_dir)[:-max(1, keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
    return root / f"step-{step}"


def _save_error(step: int, root: Path, err: OSError) -> OSError:
    return OSError(f"writing checkpoint step-{step} in {root} failed ({err}); nothing was left "
                   f"half-written. Free disk space, lower train.keep_last, or point the run dir "
                   f"elsewhere (hydra.run.dir=...)")


def _world_size_error(saved: int, now: int) -> str:
    return (f"the checkpoint was written by {saved} processes and this run has {now}: each "
            f"process's data position and rollout sampling are its own, so an exact resume "
            f"needs the same number. Resume with {saved} processes (torchrun --nproc_per_node "
            f"{saved}, accelerate launch --num_processes {saved}), or start a new run")


def resume_path(resume, run_dir, world_size: int | None = None) -> Path | None:
    """The checkpoint ``train.resume`` names, checked without loading a model.

    Cheap, so the trainer can call it with the other config checks, before any model loads.

    Args:
        resume: None/empty (start fresh), ``auto`` (the newest complete checkpoint in
            ``run_dir``, or a fresh start when there is none) or a ``step-N`` directory.
        run_dir: the run's directory.
        world_size: this run's number of processes; when given, a checkpoint written by another
            number is an error (default None: not checked).
    Returns the checkpoint directory, or None to start fresh. Raises FileNotFoundError naming
    ``train.resume`` and what to pass instead when a given path is not a complete checkpoint,
    ValueError when it was written by another number of processes.
    """
    path = _resume_path(resume, run_dir)
    if path is not None and world_size is not None:
        saved = int(torch.load(path / _STATE, weights_only=False).get("world_size", 1))
        if saved != world_size:
            raise ValueError(f"train.resume={resume} ({path}): "
                             f"{_world_size_error(saved, world_size)}")
    return path


def _resume_path(resume, run_dir) -> Path | None:
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


def resume(resume, run_dir, state, accelerator) -> bool:
    """Restore ``state`` (a `pdalign.training.trainer.TrainState`, registered with `register`), the
    weights, optimizer, scheduler and this rank's RNG from the checkpoint ``resume`` names
    (``auto`` = the newest complete one in ``run_dir``, or a path; see `resume_path`). Returns
    False, touching nothing, when starting fresh."""
    path = resume_path(resume, run_dir, accelerator.num_processes)
    if path is None:
        return False
    if (path / "state").is_dir():
        accelerator.load_state(path / "state")
        return True
    # written before checkpoints went through save_state (one process): one torch file
    saved = torch.load(path / _STATE, weights_only=False)
    _load_weights(state.model, path / "model")
    state.load_state_dict(saved)
    random.setstate(saved["rng"]["python"])
    np.random.set_state(saved["rng"]["numpy"])
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return True


def _load_weights(model, path: Path) -> None:

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict  # peft pulls bitsandbytes and torch.compile

        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    else:
        model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
