"""metrics.jsonl and the offline W&B run carry the same per-step keys."""

import json

from pdalign.logging import MetricsLogger, read_metrics, split_records
from pdalign.trainer import train
from tests.conftest import compose, tiny_overrides


def test_jsonl_every_step_and_offline_wandb_run_with_the_same_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login: W&B must run offline
    cfg = compose(tiny_overrides("method=primal_dual", "constraints=[kl_budget,length]",
                                 "train.steps=3", "logging.wandb=true",
                                 "train.rollout.prompts_per_rollout=2",
                                 "train.rollout.max_new_tokens=4"))
    train(cfg, tmp_path / "run")
    rows = split_records(read_metrics(tmp_path / "run" / "metrics.jsonl"))[0]
    assert [r["step"] for r in rows] == [1, 2, 3]
    keys = {f"{k}/{c}" for k in ("lambda", "g", "eps", "violation")
            for c in ("kl_budget", "length")}
    assert all(keys <= set(r) for r in rows)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "expected exactly one offline W&B run"
    blob = next(runs[0].glob("*.wandb")).read_bytes()
    for key in keys | {"rewards/margins", "grad_norm", "tokens_per_s", "step"}:
        assert key.encode() in blob, key


def test_torn_last_line_is_ignored_and_non_finite_values_stay_json(tmp_path):
    log = MetricsLogger(tmp_path, use_wandb=False)
    log.log({"step": 1, "loss": float("nan"), "g/x": float("inf")})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "lo')  # a crash mid-write
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows == [{"step": 1, "loss": None, "g/x": 1e308}]
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
