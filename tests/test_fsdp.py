"""FSDP2 (``train.sharding=fsdp2``) on two real CPU ranks (torchrun + gloo): the same run as DDP,
step for step, resumed exactly from its sharded checkpoint, exported as a plain model.

Select with ``-k fsdp``. The two-rank runs take ~20 s each on a 2-core CPU; the comparison of
every method and the resume are marked slow (`make test-all`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pdalign.runfiles.metrics import read_metrics, split_records
from pdalign.training.sharding import check_sharding
from tests.conftest import FIXTURES, compose, tiny_overrides

ROOT = Path(__file__).resolve().parent.parent
TRAJECTORY = ("lambda/", "lambda_next/", "g/", "loss")
# every constraint kind: rollout (refusal), opener, pair, batch (the KL, which reads the
# reference through the disabled adapter)
PRIMAL_DUAL = ["method=primal_dual", "constraints=[refusal,refusal_openers,refusal_pairs,kl_budget]",
               "train.rollout_every=2", "train.rollout.prompts_per_rollout=2",
               "train.rollout.max_new_tokens=6"]


def _args(*extra: str) -> list[str]:
    return [*tiny_overrides(f"data.heldout={FIXTURES / 'pairs.jsonl'}", "train.batch_size=2",
                            "train.dtype=fp32", "train.threads=1", "train.checkpoint_every=2",
                            "eval.every=2"), *extra]


def _torchrun(run: Path, *args: str, port: int, ranks: int = 2):
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc_per_node", str(ranks), "--master_port", str(port), "-m",
           "pdalign.cli.train", *args, f"hydra.run.dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_USE_FSDP", None)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return run


def _records(run: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    train, evals = split_records(read_metrics(run / "metrics.jsonl"))
    return {r["step"]: r for r in train}, {r["step"]: r for r in evals}


def _assert_close(a: dict, b: dict, keys, rel: float, what: str) -> None:
    far = {k: (a[k], b.get(k)) for k in keys
           if b.get(k) is None or abs(a[k] - b[k]) > rel * max(1.0, abs(a[k]))}
    assert not far, f"{what}: {far}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 4-step primal-dual run (every constraint kind) under DDP and under FSDP2."""
    root = tmp_path_factory.mktemp("fsdp")
    return {mode: _torchrun(root / mode, *_args(*PRIMAL_DUAL, "train.steps=4",
                                                f"train.sharding={mode}"), port=port)
            for mode, port in (("ddp", 29631), ("fsdp2", 29632))}


def test_fsdp2_primal_dual_retraces_ddp_on_two_ranks(runs):
    """fp32, one seed: lambda, lambda_next, g and the loss at every step, and every held-out
    metric at steps 2 and 4, agree with the DDP run to 1e-6 relative (the arithmetic differs
    only in how the rows are batched into forwards); two processes wrote the sharded state, and
    lambda is the same on both ranks."""
    train = {m: _records(r)[0] for m, r in runs.items()}
    evals = {m: _records(r)[1] for m, r in runs.items()}
    assert sorted(train["fsdp2"]) == sorted(train["ddp"]) == [1, 2, 3, 4]
    for step, a in train["ddp"].items():
        keys = [k for k in a if k.startswith(TRAJECTORY)]
        assert {"lambda/refusal", "lambda/refusal_openers", "lambda/refusal_pairs",
                "g/kl_budget"} <= set(keys)
        _assert_close(a, train["fsdp2"][step], keys, 1e-6, f"step {step}")
    assert train["ddp"][4]["lambda_next/refusal_openers"] > 0  # lambda moved: the test has teeth
    assert sorted(evals["ddp"]) == sorted(evals["fsdp2"]) == [2, 4]
    for step, a in evals["ddp"].items():
        keys = [k for k, v in a.items() if k.startswith("eval/") and isinstance(v, float)]
        assert "eval/kl_budget/id/value" in keys and "eval/refusal_openers/id.opener/value" in keys
        _assert_close(a, evals["fsdp2"][step], keys, 1e-6, f"eval at step {step}")
    state = runs["fsdp2"] / "checkpoints" / "step-4" / "state"
    assert sorted(p.name for p in (state / "sharded").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]
    ranks = torch.load(state / "custom_checkpoint_0.pkl", weights_only=False)
    assert ranks["world_size"] == 2
    assert ranks["ranks"][0]["dual"]["lam"].equal(ranks["ranks"][1]["dual"]["lam"])
    for mode in runs:
        assert json.loads((runs[mode] / "summary.json").read_text())["world_size"] == 2


def test_fsdp2_export_loads_in_plain_transformers(runs, tmp_path):
    """``pdalign-export --merge`` of the sharded run: a plain transformers model, no pdalign or
    peft needed, whose logits equal the merged DDP run's (the same weights up to fp32 noise)."""
    from transformers import AutoModelForCausalLM

    exe = Path(sys.executable).with_name("pdalign-export")
    models = {}
    for mode, run in runs.items():
        out = tmp_path / mode
        done = subprocess.run([str(exe), "--run-dir", str(run), "--out", str(out), "--merge"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        models[mode] = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 5, 9, 20, 33, 2]])
    with torch.no_grad():
        a, b = (models[m](ids).logits for m in ("ddp", "fsdp2"))
    assert type(models["fsdp2"]).__name__ == "LlamaForCausalLM"
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fsdp2_stop_at_a_checkpoint_and_resume_continues_exactly(runs, tmp_path):
    """Stop the FSDP2 run at its step-2 checkpoint (train.steps=2: the process ends at the
    boundary, as a kill right after the save would leave it) and continue with
    train.resume=auto to step 4: every logged number equals the uninterrupted run's exactly.
    Resuming without the sharded adapter and Adam state makes steps 3 and 4 differ (checked
    by hand when this test was written), so equality means the shards came back."""
    run = tmp_path / "resumed"
    _torchrun(run, *_args(*PRIMAL_DUAL, "train.steps=2", "train.sharding=fsdp2"), port=29633)
    _torchrun(run, *_args(*PRIMAL_DUAL, "train.steps=4", "train.sharding=fsdp2",
                          "train.resume=auto"), port=29634)
    (a_train, a_eval), (b_train, b_eval) = _records(runs["fsdp2"]), _records(run)
    assert sorted(b_train) == [1, 2, 3, 4] and sorted(b_eval) == [2, 4]
    for step in a_train:
        keys = [k for k in a_train[step] if k.startswith(TRAJECTORY)]
        assert {k: a_train[step][k] for k in keys} == {k: b_train[step].get(k) for k in keys}
    for step in a_eval:
        assert a_eval[step] == b_eval[step]


@pytest.mark.slow
@pytest.mark.parametrize("method, more", [
    ("dpo", []), ("orpo", []), ("kto", ["data.unpair=true"]),
    ("dpo", ["peft=qlora", "peft.optimizer=adamw"]),  # the packed 4-bit storage sharded
], ids=["dpo", "orpo", "kto", "dpo-qlora"])
def test_fsdp2_baselines_retrace_ddp_on_two_ranks(method, more, tmp_path):
    """Each baseline objective (and DPO under QLoRA), 3 steps: the loss and the objective's
    metrics at every step and the held-out metrics under FSDP2 agree with DDP to 1e-6
    relative."""
    extra = [f"method={method}", "train.steps=3", "constraints=[kl_budget]", *more]
    got = {mode: _records(_torchrun(tmp_path / mode, *_args(*extra, f"train.sharding={mode}"),
                                    port=port))
           for mode, port in (("ddp", 29635), ("fsdp2", 29636))}
    for part in (0, 1):
        a, b = got["ddp"][part], got["fsdp2"][part]
        assert sorted(a) == sorted(b) and a
        for step in a:
            keys = [k for k, v in a[step].items() if isinstance(v, float)
                    and not k.endswith(("_time_s", "tokens_per_s"))]
            _assert_close(a[step], b[step], keys, 1e-6, f"{method} step {step}")


@pytest.mark.parametrize("overrides, message", [
    (["peft=none"], r"train.sharding=fsdp2 needs an adapter \(peft=lora\)"),
    (["peft=qlora"], r"needs torch's AdamW \(peft.optimizer=adamw\): adamw_8bit"),
    (["train.optimizer=adamw_8bit"], r"needs torch's AdamW \(train.optimizer=adamw\)"),
])
def test_fsdp2_config_errors_name_the_field_and_the_fix(overrides, message):
    cfg = compose(tiny_overrides("train.sharding=fsdp2", *overrides))
    with pytest.raises(ValueError, match=message):
        check_sharding(cfg, "MULTI_CPU")


def test_fsdp2_refuses_accelerates_fsdp_plugin(monkeypatch):
    """accelerate's own FSDP (its config, or ACCELERATE_USE_FSDP, which on CPU silently runs
    DDP) is refused whatever train.sharding says, pointing at the supported launch."""
    cfg = compose(tiny_overrides("train.sharding=fsdp2"))
    with pytest.raises(ValueError, match="experiments/accelerate/fsdp2.yaml"):
        check_sharding(cfg, "FSDP")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="silently runs DDP"):
        check_sharding(compose(tiny_overrides()), "MULTI_CPU")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert check_sharding(cfg, "MULTI_CPU") is True
    assert check_sharding(compose(tiny_overrides()), "MULTI_CPU") is False
    assert check_sharding(compose(tiny_overrides("peft=qlora", "peft.optimizer=adamw",
                                                 "train.sharding=fsdp2")), "MULTI_CPU")
