"""Hydra's submitit launcher, the path the Slurm preset (conf/hydra/launcher/slurm.yaml) takes,
run with its local executor: a 2-job multirun of the real pdalign-train on the tiny model."""

from __future__ import annotations

import json
import math
import os
import pickle

from omegaconf import OmegaConf

from pdalign.runfiles.metrics import read_metrics, split_records
from tests.conftest import pdalign_train, tiny_overrides


def test_submitit_local_multirun_runs_both_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    done = pdalign_train(["--multirun", "hydra/launcher=submitit_local",
                          "hydra.launcher.timeout_min=5", f"hydra.sweep.dir={sweep}",
                          *tiny_overrides("train.steps=2"), "seed=0,1"], timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Submitit 'local' sweep" in done.stdout + done.stderr
    runs = sorted(p for p in sweep.iterdir() if (p / "metrics.jsonl").is_file())
    assert [p.name for p in runs] == ["0-dpo-dpo-seed0", "1-dpo-dpo-seed1"]
    jobs = sorted((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(jobs) == 2  # one submitit job each, in processes of their own
    assert {int(p.parent.name) for p in jobs}.isdisjoint({os.getpid(), 0})
    returned = []
    for job in jobs:
        with open(job, "rb") as fh:
            status, value = pickle.load(fh)
        assert status == "success", value
        returned.append(value.return_value)  # pdalign-train's final loss, as sweepers get it
    finals = []
    for seed, run in enumerate(runs):
        assert OmegaConf.load(run / "config.yaml").seed == seed
        train, evals = split_records(read_metrics(run / "metrics.jsonl"))
        assert [r["step"] for r in train] == [1, 2] and len(evals) == 1
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["final_loss"] == train[-1]["loss"]
        finals.append(summary["final_loss"])
    assert all(math.isfinite(x) for x in finals)
    assert sorted(returned) == sorted(finals)  # the same floats, passed back through pickles
