"""Two real CPU ranks (torchrun + gloo): lambda is bit-identical on both after several steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _two_ranks(out: Path, *args: str, port: int) -> list[dict]:
    """Run tests/dist_worker.py on two torchrun ranks; each rank's JSON."""
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port),
         str(ROOT / "tests" / "dist_worker.py"), str(out), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1)]


def test_lambda_identical_on_two_ranks(tmp_path):
    ranks = _two_ranks(tmp_path, port=29517)
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2  # two processes, truly
    a, b = ranks[0]["updates"], ranks[1]["updates"]
    assert len(a) == len(b) == 4
    # Each rank samples its own rollouts, so its local g differs; after the mean all-reduce
    # the dual step sees the same g and lambda is bit-identical.
    assert a == b
    assert ranks[0]["local_g"] != ranks[1]["local_g"]  # so the agreement is the all-reduce's
    for k, update in enumerate(a):  # and the dual step used the mean of the two local g
        mean = [(x + y) / 2 for x, y in zip(ranks[0]["local_g"][k], ranks[1]["local_g"][k])]
        assert update["g"] == pytest.approx(mean, rel=1e-6)
    assert ranks[0]["lambda"] == ranks[1]["lambda"]
    assert a[-1]["lambda"][2] > 0  # the length bound of 1 token is violated: lambda moved
    # length runs its stop estimator (dist_worker), on stop log-probs from the shared forward
    from pdalign.runfiles.metrics import read_metrics

    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(steps) == 4 and all(0 < r["stat/length/stop_prob"] < 1 for r in steps)
    assert all(r["signal/length/silent_when_flat"] == 0.0 for r in steps)



def test_a_nan_on_one_rank_skips_the_step_on_both(tmp_path):
    """Rank 1 alone gets a NaN loss at step 2. Both ranks must skip that step (no backward, no
    dual update) and go on in lockstep: had rank 1 skipped alone, rank 0 would wait in DDP's
    gradient all-reduce for a backward that never comes."""
    from pdalign.runfiles.metrics import read_metrics

    ranks = _two_ranks(tmp_path, "2", port=29518)
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    a, b = ranks[0]["updates"], ranks[1]["updates"]
    assert len(a) == len(b) == 3  # steps 1, 3, 4: step 2 had no dual update on either rank
    assert a == b and ranks[0]["lambda"] == ranks[1]["lambda"]
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
               if "loss" in r or "skipped_nonfinite" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[1] == {"step": 2, "skipped_nonfinite": 1}
    assert records[2]["lambda/length"] == records[0]["lambda_next/length"] > 0


# ---- kill and resume under two ranks ----------------------------------------------------------

STEPS = 12
# 48 fixture pairs / (batch 4 x 2 ranks) = 6 batches a epoch: the data order crosses an epoch at
# step 6. Rollouts every 3 steps, checkpoints at 4, 8, 12: a resume first re-scores samples drawn
# before the kill. profanity_check gives each sampled response its own cost, so each rank's
# samples (drawn with its own RNG, seed + rank) move its g and the all-reduced g moves lambda:
# had rank 1 resumed with rank 0's rollout RNG, g would differ from the first rollout on.
RUN = ["model=tiny", "data.train=tests/fixtures/pairs.jsonl", "data.heldout=null",
       "logging.wandb=false", "method=primal_dual", "constraints=[toxicity,kl_budget,length]",
       "constraints.toxicity.scorer=profanity_check", "constraints.toxicity.epsilon=0",
       "constraints.length.epsilon=3", "constraints.kl_budget.epsilon=1e-4",
       "train.rollout.prompts_per_rollout=2", "train.rollout.max_new_tokens=6",
       "train.rollout_every=3", "train.checkpoint_every=4", "train.keep_last=10",
       f"train.steps={STEPS}", "train.batch_size=4", "train.warmup_steps=3",
       "train.schedule=cosine", "train.threads=1", "seed=3", "eval.every=0",
       "eval.prompts_per_set=2", "eval.max_new_tokens=4"]
TRAJECTORY = ("lambda/", "lambda_next/", "g/", "loss")


def _torchrun_train(run: Path, *args: str, port: int, log: Path | None = None):
    """``pdalign-train`` on two torchrun ranks (gloo), as a user runs it; with ``log``, the
    running Popen, else the finished result."""
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m",
           "pdalign.cli.train", *RUN, *args, f"hydra.run.dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    if log is None:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _kill_job(proc) -> None:
    """SIGKILL torchrun and its workers at once, as a node failure would. torchrun starts each
    worker in a session of its own, so killing torchrun's process group would leave them
    running: collect its descendants from /proc and kill every one."""
    import signal
    import time

    def children(pid):
        kids = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids += [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                pass
        return kids + [g for k in kids for g in children(k)]

    tree = children(proc.pid)
    assert len(tree) >= 2, f"torchrun has {len(tree)} worker processes"
    for pid in [*tree, proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)

    def alive(pid):
        try:
            return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
        except OSError:
            return False

    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in tree):
        assert time.monotonic() < deadline, "a worker outlived SIGKILL"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_and_resume_on_two_ranks_retraces_the_uninterrupted_run(tmp_path):
    """SIGKILL a two-rank primal-dual run (torchrun and both workers) between checkpoints and
    resume it with train.resume=auto: lambda, g and the loss equal the uninterrupted two-rank
    run's at every step. Equal, not close: the resumed run repeats the same arithmetic on the
    same state, so any lost state (rank 1's RNG, samples, data position, Adam moments) shows as
    a difference, however small."""
    import time

    import torch

    from pdalign.runfiles.metrics import read_metrics, split_records
    from pdalign.training import checkpoint as ckpt

    full = _torchrun_train(tmp_path / "full", port=29521)
    assert full.returncode == 0, full.stderr[-4000:]

    run = tmp_path / "killed"
    proc = _torchrun_train(run, port=29522, log=tmp_path / "killed.log")
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 300
    # step 5 is logged after checkpoint step-4 is complete: kill between two checkpoints
    while not (metrics.is_file() and any(r.get("step", 0) >= 5 for r in read_metrics(metrics))):
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "no step 5 within 300 s"
        time.sleep(0.01)
    _kill_job(proc)
    assert not (run / "summary.json").exists(), "the run finished before it was killed"
    done = ckpt.checkpoints(run)
    resumed_from = int(done[-1].name.split("-")[1])
    assert resumed_from in (4, 8)
    # two processes, each with its own state: both ranks' RNG files, and rank 1's rollout RNG
    # is not rank 0's (seed + rank), so restoring rank 0's on both would change rank 1's samples
    state = done[-1] / "state"
    assert sorted(p.name for p in state.glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl"]
    ranks = torch.load(state / "custom_checkpoint_0.pkl", weights_only=False)
    assert ranks["world_size"] == 2 and len(ranks["ranks"]) == 2
    assert ranks["ranks"][0]["rollouts"]["rng"] != ranks["ranks"][1]["rollouts"]["rng"]
    assert ranks["ranks"][0]["dual"]["lam"].equal(ranks["ranks"][1]["dual"]["lam"])

    again = _torchrun_train(run, "train.resume=auto", port=29523)
    assert again.returncode == 0, again.stderr[-4000:]
    for r in (tmp_path / "full", run):
        summary = json.loads((r / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["steps"] == STEPS
    assert [p.name for p in ckpt.checkpoints(run)] == ["step-4", "step-8", "step-12"]

    a = {r["step"]: r for r in split_records(read_metrics(tmp_path / "full" / "metrics.jsonl"))[0]}
    b = {r["step"]: r for r in split_records(read_metrics(run / "metrics.jsonl"))[0]}
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        keys = [k for k in a[step] if k.startswith(TRAJECTORY)]
        assert {"loss", "lambda/toxicity", "g/toxicity", "g/kl_budget"} <= set(keys)
        mismatch = {k: (a[step][k], b[step].get(k)) for k in keys if a[step][k] != b[step].get(k)}
        assert not mismatch, f"step {step} (resumed from {resumed_from}): {mismatch}"
    assert a[STEPS]["lambda_next/toxicity"] > 0  # lambda moved: the comparison has teeth


def test_shipped_accelerate_configs_and_slurm_script_parse():
    """The README's recipes: each accelerate config loads with accelerate's own reader and asks
    for what its name says; the sbatch script is valid bash."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    folder = ROOT / "experiments" / "accelerate"
    ddp = load_config_from_file(str(folder / "ddp.yaml"))
    fsdp = load_config_from_file(str(folder / "fsdp2.yaml"))
    # FSDP2 is pdalign's own (train.sharding=fsdp2): accelerate only launches the processes
    assert ddp.distributed_type == fsdp.distributed_type == DistributedType.MULTI_GPU
    assert "train.sharding=fsdp2" in (folder / "fsdp2.yaml").read_text()
    assert ddp.mixed_precision == fsdp.mixed_precision == "no"  # pdalign picks the precision
    subprocess.run(["bash", "-n", str(folder / "slurm.sbatch")], check=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
