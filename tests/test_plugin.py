"""The plugin promise, as a user meets it: one new file in constraints/ and its YAML in
conf/constraints/, and ``constraints=[mine]`` trains with it, nothing else changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pdalign.runfiles.metrics import read_metrics, split_records
from tests.conftest import FIXTURES

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = '''"""Share of digit characters in a response: a user's rollout constraint."""

import torch

from pdalign.constraint import RolloutConstraint


class Digits(RolloutConstraint):
    epsilon_range = (0.0, 1.0)
    epsilon_unit = "share of characters"
    cost_range = (0.0, 1.0)

    def cost(self, prompts, responses, response_lengths):
        return torch.tensor([sum(ch.isdigit() for ch in r) / max(len(r), 1)
                             for r in responses])
'''

YAML = '''digits:
  _target_: pdalign.constraints.digits.Digits
  epsilon: 0.0
  prompts: benign
'''


def test_a_new_constraint_file_and_yaml_train_with_nothing_else_changed(tmp_path):
    """A copy of the project's pdalign/, constraints/ and conf/ (so the test never writes
    into the checkout), laid out as the editable install maps it: ``pdalign.constraints`` is
    the constraints/ folder. The user adds constraints/digits.py and
    conf/constraints/digits.yaml, then runs the real CLI: the constraint is built from its
    YAML, sampled, gets a multiplier that follows the gradient rule, and is evaluated on held-out
    prompts, and its class gives the unit the report prints."""
    repo = tmp_path / "repo"
    for folder in ("pdalign", "constraints", "conf"):
        shutil.copytree(ROOT / folder, repo / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "pdalign" / "constraints").symlink_to(repo / "constraints", target_is_directory=True)
    (repo / "constraints" / "digits.py").write_text(PLUGIN)
    (repo / "conf" / "constraints" / "digits.yaml").write_text(YAML)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "pdalign.cli.train", "model=tiny", "method=primal_dual",
         "constraints=[digits]", f"data.train={FIXTURES / 'pairs.jsonl'}", "data.heldout=null",
         "logging.wandb=false", "train.batch_size=4", "train.steps=3", "train.rollout_every=1",
         "train.rollout.prompts_per_rollout=4", "train.rollout.max_new_tokens=8",
         "eval.prompts_per_set=2", "eval.max_new_tokens=4", "dual.lr=1",
         f"hydra.run.dir={run}"], cwd=repo, env=env, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, evals = split_records(read_metrics(run / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    lam = 0.0
    for r in rows:  # eps = 0: lambda_next = lambda + 1 * g, each g a share in [0, 1]
        assert 0.0 <= r["g/digits"] <= 1.0 and r["eps/digits"] == 0.0
        assert r["lambda/digits"] == lam
        lam = min(lam + r["g/digits"], 10.0)
        assert abs(r["lambda_next/digits"] - lam) < 1e-9
    assert evals and "eval/digits/id/value" in evals[-1]
    assert evals[-1]["eval/digits/id/bound/betting"] == 1.0  # from the class's cost_range
    config = json.loads((run / "manifest.json").read_text())["config"]
    assert config["constraints"]["digits"]["_target_"] == "pdalign.constraints.digits.Digits"
    unit = subprocess.run(  # the report finds the unit through the run's _target_
        [sys.executable, "-c", "import sys; from pdalign.reporting.runs import collect_runs; "
         "from pdalign.reporting.plots import constraint_unit; "
         "print(constraint_unit(collect_runs(sys.argv[1]), 'digits'))",
         str(run)], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert unit.stdout.strip() == "share of characters", unit.stderr[-2000:]
