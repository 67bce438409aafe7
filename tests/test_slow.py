"""End-to-end runs on the embedded SmolLM2-135M (minutes on a 2-core CPU): `make test-all`."""

import pytest

from pdalign.runfiles.metrics import read_metrics, split_records
from pdalign.training.trainer import train
from tests.conftest import compose

pytestmark = pytest.mark.slow


def test_primal_dual_on_smollm2_with_lora_logs_lambda_and_evaluates(tmp_path):
    cfg = compose(["method=primal_dual", "constraints=[refusal,kl_budget,length]",
                   "train.steps=4", "train.batch_size=2", "train.rollout.prompts_per_rollout=2",
                   "train.rollout.max_new_tokens=16", "eval.prompts_per_set=4",
                   "eval.max_new_tokens=16", "logging.wandb=false",
                   "constraints.kl_budget.epsilon=0.001", "constraints.length.epsilon=8"])
    summary = train(cfg, tmp_path / "run")
    rows, evals = split_records(read_metrics(tmp_path / "run" / "metrics.jsonl"))
    assert summary["steps"] == 4 and len(rows) == 4 and len(evals) == 1
    lam = [r["lambda_next/kl_budget"] for r in rows]
    assert lam[-1] > 0  # a 0.001 nats/token budget is violated once LoRA moves the policy
    assert 0.0 <= evals[0]["eval/pref_accuracy"] <= 1.0


def test_dpo_on_smollm2_lowers_the_loss(tmp_path):
    cfg = compose(["method=dpo", "train.steps=6", "train.lr=1e-3", "train.warmup_steps=0",
                   "logging.wandb=false", "eval.prompts_per_set=2", "eval.max_new_tokens=4"])
    train(cfg, tmp_path / "run")
    rows, _ = split_records(read_metrics(tmp_path / "run" / "metrics.jsonl"))
    assert rows[-1]["loss"] < rows[0]["loss"]
