"""Numerical guard: a non-finite loss or constraint estimate skips the whole step (no primal,
no dual update), is logged as ``skipped_nonfinite``, never reaches lambda, and
``train.max_nonfinite_steps`` in a row stop the run with one error naming lr, beta and bf16."""

import math
import re

import pytest
import torch

import pdalign.constraints.kl_budget
import pdalign.objectives.losses
from pdalign.runfiles.metrics import read_metrics
from pdalign.training.trainer import train
from tests.conftest import compose, pdalign_train, tiny_overrides

# kl_budget with eps ~0 and a large dual step: lambda is > 0 from step 2 on, so a NaN that
# leaked into the dual update would show.
RUN = ("method=primal_dual", "constraints=[kl_budget]", "constraints.kl_budget.epsilon=1e-9",
       "dual.lr=1000", "train.max_nonfinite_steps=3")


def _nan_on_calls(monkeypatch, cls, method, bad, field=None):
    """Make ``cls.method`` return NaN on the calls (1-based) in ``bad``."""
    original = getattr(cls, method)
    calls = []

    def patched(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) in bad:
            if field is None:  # an objective: (losses, metrics)
                losses, metrics = result
                return losses * float("nan"), metrics
            setattr(result, field, getattr(result, field) * float("nan"))
        return result

    monkeypatch.setattr(cls, method, patched)


def _lambdas(records):
    return [v for r in records for k, v in r.items() if k.startswith(("lambda/", "lambda_next/"))]


def test_nan_loss_in_a_row_skips_steps_then_stops_naming_lr_beta_bf16(tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, pdalign.objectives.preference.DPO, "__call__", bad=range(3, 100))
    with pytest.raises(FloatingPointError) as err:
        train(compose(tiny_overrides(*RUN, "train.steps=10")), tmp_path / "run")
    message = str(err.value)
    assert message.startswith("3 non-finite steps in a row at step 5")
    assert "train.lr" in message and "beta" in message and "bf16" in message
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert all("loss" in r for r in records[:2])
    assert [r.get("skipped_nonfinite") for r in records[2:]] == [1, 1, 1]
    assert all("lambda/kl_budget" not in r for r in records[2:])  # no dual step either
    assert records[1]["lambda_next/kl_budget"] > 0
    assert all(math.isfinite(v) for v in _lambdas(records))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("where", ["loss", "constraint estimate"])
def test_one_nan_step_is_skipped_and_lambda_carries_over_unchanged(tmp_path, monkeypatch, where):
    if where == "loss":
        _nan_on_calls(monkeypatch, pdalign.objectives.preference.DPO, "__call__", bad={3})
    else:
        _nan_on_calls(monkeypatch, pdalign.constraints.kl_budget.KLBudget, "estimate", bad={3},
                      field="value")
    summary = train(compose(tiny_overrides(*RUN, "train.steps=6")), tmp_path / "run")
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
               if "loss" in r or "skipped_nonfinite" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[2] == {"step": 3, "skipped_nonfinite": 1}
    # the step after the skip starts from the lambda the step before it produced
    assert records[3]["lambda/kl_budget"] == records[1]["lambda_next/kl_budget"] > 0
    assert all(math.isfinite(v) for v in _lambdas(records))
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert summary["steps"] == 6 and math.isfinite(summary["lambda"]["lambda/kl_budget"])
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-6" / "trainer_state.pt",
                       weights_only=False)
    assert torch.isfinite(state["dual"]["lam"]).all()


def test_huge_lr_through_the_cli_stops_with_the_guard_error(tmp_path):
    """A real blow-up, no patching: lr 1e20 without clipping overflows the LoRA weights."""
    result = pdalign_train(["model=tiny", "data.heldout=null", "logging.wandb=false",
                            "data.train=tests/fixtures/pairs.jsonl", "train.lr=1e20",
                            "train.max_grad_norm=0", "train.warmup_steps=0", "train.steps=10",
                            "train.max_nonfinite_steps=3", "train.threads=1",
                            f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 1
    assert re.search(r"^FloatingPointError: 3 non-finite steps in a row at step \d+: the likely "
                     r"causes are a too-large train.lr, a too-large beta, or bf16 overflow "
                     r"\(try train.dtype=fp32\)$", result.stderr, re.M), result.stderr[-2000:]
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r.get("skipped_nonfinite") for r in records][-3:] == [1, 1, 1]
    assert all(math.isfinite(v) for v in _lambdas(records))
