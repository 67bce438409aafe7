"""Kill-and-resume: a SIGKILLed primal-dual run resumed with train.resume=auto retraces the
uninterrupted run bit for bit; half-written checkpoints are never resumed; rotation; bad paths."""

import json
import os
import shutil
import signal
import time

import pytest

from pdalign.runfiles.metrics import MetricsLogger, read_metrics, split_records
from pdalign.training import checkpoint as ckpt
from pdalign.training.trainer import train
from tests.conftest import FIXTURES, compose, pdalign_train, tiny_overrides

STEPS = 12
# 48 fixture pairs / batch 8 = 6 batches: the data order crosses an epoch at step 6. Rollouts
# are drawn at steps 0, 3, 6, 9 and checkpoints written at 4, 8, 12, so a resume from either
# checkpoint first re-scores samples drawn before the kill (importance weights, old log-probs).
# profanity_check gives each sampled response its own cost (refusal and length are constant
# on the tiny model's gibberish), so the samples, their baseline and importance weights all
# move the loss and g; eps 0 and a length bound under both budgets (6 and eval's 4 tokens)
# make every lambda rise.
RUN = ["model=tiny", f"data.train={FIXTURES / 'pairs.jsonl'}", "data.heldout=null",
       "logging.wandb=false", "method=primal_dual", "constraints=[toxicity,kl_budget,length]",
       "constraints.toxicity.scorer=profanity_check", "constraints.toxicity.epsilon=0",
       "constraints.length.epsilon=3", "constraints.kl_budget.epsilon=1e-4",
       "train.rollout.prompts_per_rollout=2", "train.rollout.max_new_tokens=6",
       "train.rollout_every=3", "train.checkpoint_every=4", "train.keep_last=10",
       f"train.steps={STEPS}", "train.batch_size=8", "train.warmup_steps=3",
       "train.schedule=cosine", "train.threads=1", "seed=3", "eval.every=4",
       "eval.prompts_per_set=2", "eval.max_new_tokens=4"]
TRAJECTORY = ("lambda/", "lambda_next/", "g/", "loss")


def _last_per_step(records):
    """{step: record}, the last one logged for each step (a killed run's records past its
    checkpoint are logged again by the resumed run)."""
    return {r["step"]: r for r in records}


def _wait_for_step(proc, metrics, step, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and any(r.get("step", 0) >= step for r in read_metrics(metrics)):
            return
        assert proc.poll() is None, f"the run exited ({proc.returncode}) before step {step}"
        time.sleep(0.01)
    raise AssertionError(f"no step {step} within {timeout} s")


def test_sigkill_then_resume_auto_retraces_the_uninterrupted_run(tmp_path):
    full = pdalign_train([*RUN, f"hydra.run.dir={tmp_path / 'full'}"])
    assert full.returncode == 0, full.stderr[-3000:]

    run = tmp_path / "killed"
    proc = pdalign_train([*RUN, f"hydra.run.dir={run}"], log=tmp_path / "killed.log")
    # step 5 is logged after checkpoint step-4 is complete: kill between two checkpoints
    _wait_for_step(proc, run / "metrics.jsonl", 5)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it was killed"
    assert not (run / "summary.json").exists()
    done = ckpt.checkpoints(run)
    resumed_from = int(done[-1].name.split("-")[1])
    assert resumed_from in (4, 8) and STEPS > resumed_from
    logged = max(r["step"] for r in read_metrics(run / "metrics.jsonl"))
    assert logged > resumed_from  # records past the checkpoint that must be logged again

    # a writer killed just before its rename, and a step dir missing its state file
    shutil.copytree(done[-1], run / "checkpoints" / ".step-11-x7a2")
    shutil.copytree(done[-1] / "model", run / "checkpoints" / "step-10" / "model")
    assert ckpt.resume_path("auto", run) == done[-1]
    kept = {p.name: os.stat(p / "trainer_state.pt").st_ino for p in done}

    again = pdalign_train([*RUN, "train.resume=auto", f"hydra.run.dir={run}"])
    assert again.returncode == 0, again.stderr[-3000:]
    # the checkpoints written before the kill were read, not rewritten: a real resume
    assert {p.name: os.stat(p / "trainer_state.pt").st_ino
            for p in done} == kept
    assert not list((run / "checkpoints").glob(".step-*"))  # the stale temp dir is gone
    assert [p.name for p in ckpt.checkpoints(run)] == [f"step-{s}" for s in (4, 8, 12)]

    a_train, a_eval = split_records(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    b_train, b_eval = split_records(read_metrics(run / "metrics.jsonl"))
    a, b = _last_per_step(a_train), _last_per_step(b_train)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        keys = [k for k in a[step] if k.startswith(TRAJECTORY)]
        assert {"loss", "lambda/length", "lambda_next/toxicity", "g/kl_budget"} <= set(keys)
        mismatch = {k: (a[step][k], b[step].get(k)) for k in keys if a[step][k] != b[step].get(k)}
        assert not mismatch, f"step {step} (resumed from {resumed_from}): {mismatch}"
    a_ev, b_ev = _last_per_step(a_eval), _last_per_step(b_eval)
    assert sorted(a_ev) == sorted(b_ev) == [4, 8, 12]
    for step in a_ev:
        assert a_ev[step] == b_ev[step], step
    summary = json.loads((run / "summary.json").read_text())
    assert summary["lambda"] == json.loads((tmp_path / "full" / "summary.json").read_text())[
        "lambda"]
    # the clock went on from the checkpoint: wall time covers both legs of the run
    import torch

    before = torch.load(done[-1] / "trainer_state.pt", weights_only=False)["elapsed_s"]
    assert 0 < before < summary["wall_time_s"]

    # re-running the finished run with resume=auto (a sweep re-launched after an
    # interruption) leaves it exactly as it was
    files = {name: (tmp_path / "full" / name).read_bytes()
             for name in ("summary.json", "metrics.jsonl", "config.yaml", "manifest.json")}
    rerun = pdalign_train([*RUN, "train.resume=auto", f"hydra.run.dir={tmp_path / 'full'}"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "run already finished" in rerun.stdout + rerun.stderr
    assert {name: (tmp_path / "full" / name).read_bytes() for name in files} == files


def test_metrics_logger_drops_records_past_the_resume_step(tmp_path):
    """What the trainer gets by passing resume_step: each step is logged once after a resume."""
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": float(s)}) for s in range(1, 7)]
    path.write_text("\n".join(lines) + '\n{"step": 7, "lo')  # a torn last line from the kill
    logger = MetricsLogger(tmp_path, use_wandb=False, resume=True, resume_step=4)
    logger.log({"step": 5, "loss": 50.0})
    logger.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0)]
    # resume without a step keeps everything (the trainer's behaviour before it passes one)
    MetricsLogger(tmp_path, use_wandb=False, resume=True).close()
    assert len(read_metrics(path)) == 5


def _state(path):
    path.mkdir(parents=True)
    (path / "trainer_state.pt").write_bytes(b"x")
    return path


def test_half_written_checkpoints_are_never_resumed(tmp_path):
    root = tmp_path / "checkpoints"
    good = _state(root / "step-3")
    _state(root / ".step-9-abc")  # temp dir of a writer killed before its rename
    (root / "step-7" / "model").mkdir(parents=True)  # no trainer_state.pt
    _state(root / "step-latest")  # not step-<int>
    assert ckpt.checkpoints(tmp_path) == [good]
    assert ckpt.resume_path("auto", tmp_path) == good
    with pytest.raises(FileNotFoundError, match=r"train.resume=.*step-7: an incomplete "
                       r"checkpoint .*Use train.resume=.*step-3 \(the newest complete one"):
        ckpt.resume_path(str(root / "step-7"), tmp_path)


def test_bad_resume_path_names_train_resume_and_the_fix(tmp_path):
    missing = tmp_path / "nowhere" / "step-5"
    with pytest.raises(FileNotFoundError) as err:
        ckpt.resume_path(str(missing), tmp_path / "new")
    assert str(err.value) == (f"train.resume={missing}: no such directory. Use train.resume=auto "
                              f"to continue the newest complete checkpoint in the run dir, or a "
                              f"checkpoints/step-N directory")
    # a run dir given instead of one of its checkpoints: name the checkpoint meant
    step2 = _state(tmp_path / "old" / "checkpoints" / "step-2")
    with pytest.raises(FileNotFoundError, match=rf"not a checkpoint directory .*Use "
                       rf"train.resume={step2} \(the newest complete one there\)"):
        ckpt.resume_path(str(tmp_path / "old"), tmp_path / "new")
    assert ckpt.resume_path("auto", tmp_path / "new") is None  # nothing yet: start fresh
    assert ckpt.resume_path(None, tmp_path / "old") is None


def test_keep_last_keeps_only_the_newest_checkpoints(tmp_path):
    cfg = compose(tiny_overrides("train.steps=5", "train.checkpoint_every=1", "train.keep_last=2"))
    train(cfg, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "step-4", "step-5"]
    # a resumed, finished run does no step and keeps its checkpoints
    summary = train(compose(tiny_overrides("train.steps=5", "train.checkpoint_every=1",
                                           "train.keep_last=2", "train.resume=auto")),
                    tmp_path / "run")
    assert summary["steps"] == 5 and summary["final_loss"] is None
    import torch

    saved = torch.load(tmp_path / "run" / "checkpoints" / "step-5" / "trainer_state.pt",
                       weights_only=False)["elapsed_s"]
    assert 0 < saved <= summary["wall_time_s"]  # the finished run's clock, not ~0
    assert [p.name for p in ckpt.checkpoints(tmp_path / "run")] == ["step-4", "step-5"]
