"""CUDA paths: log-probs, QLoRA (bitsandbytes nf4 + 8-bit AdamW) and the primal-dual loop on a GPU.

Skipped without CUDA (CI has none); run on a lent GPU with ``pytest -m gpu tests/test_gpu.py``.
"""

import math

import pytest
import torch

from pdalign.policy.logprobs import sequence_logps
from pdalign.policy.models import build_tiny
from pdalign.policy.precision import resolve_dtype
from pdalign.runfiles.metrics import read_metrics, split_records
from pdalign.training.trainer import train
from tests.conftest import compose, tiny_overrides

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

ALL4 = "constraints=[toxicity,refusal,kl_budget,length]"
FAST_ROLLOUT = ["train.rollout_every=2", "train.rollout.prompts_per_rollout=4",
                "train.rollout.max_new_tokens=6", "constraints.toxicity.scorer=profanity_check",
                "constraints.length.epsilon=3"]  # below both budgets (6 and eval's 4)


def _rows(tmp_path, *overrides):
    summary = train(compose(tiny_overrides(*overrides)), tmp_path / "run")
    return summary, split_records(read_metrics(tmp_path / "run" / "metrics.jsonl"))[0]


def _pairs_batch(vocab: int, b: int = 3, prompt: int = 7, resp: int = 9):
    """b pairs as 2b rows (chosen then rejected), each pair's rows sharing their prompt."""
    g = torch.Generator().manual_seed(0)
    p = torch.randint(0, vocab, (b, prompt), generator=g)
    ids = torch.cat([torch.cat([p, torch.randint(0, vocab, (b, resp), generator=g)], 1)
                     for _ in range(2)])
    labels = ids.clone()
    labels[:, :prompt] = -100
    return ids, torch.ones_like(ids), labels


def test_auto_dtype_on_cuda_is_bf16_where_the_gpu_has_it():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert resolve_dtype("auto", "cuda") == expected


def test_log_probs_on_cuda_equal_cpu_ones_shared_prompt_included():
    torch.manual_seed(0)
    model = build_tiny(1000).eval()
    ids, mask, labels = _pairs_batch(1000)
    with torch.no_grad():
        ref = sequence_logps(model, ids, mask, labels)
        gpu = model.cuda()
        full = sequence_logps(gpu, ids.cuda(), mask.cuda(), labels.cuda(), with_kl=False)
        shared = sequence_logps(gpu, ids.cuda(), mask.cuda(), labels.cuda(), pairs=3)
    assert torch.equal(full.n_tokens.cpu(), ref.n_tokens)
    torch.testing.assert_close(full.logps.cpu(), ref.logps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shared.logps.cpu(), ref.logps, rtol=1e-4, atol=1e-4)


def test_qlora_dpo_trains_on_cuda_with_nf4_and_8bit_adamw(tmp_path):
    summary, rows = _rows(tmp_path, "method=dpo", "peft=qlora", "train.steps=4")
    assert summary["steps"] == 4 and len(rows) == 4
    assert summary["dtype"] == str(resolve_dtype("auto", "cuda")).replace("torch.", "")
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
    # LoRA's B matrices start at exactly 0, so the policy starts as the reference: every one
    # of them is nonzero in the saved adapter only if 8-bit AdamW stepped through nf4 layers
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "run" / "checkpoints" / "step-4" / "model" /
                      "adapter_model.safetensors")
    lora_b = {k: v for k, v in saved.items() if "lora_B" in k}
    assert lora_b and all(v.float().abs().max() > 0 for v in lora_b.values()), sorted(lora_b)
    assert rows[0]["rewards/margins"] == 0.0  # step 1: policy == reference exactly


def test_primal_dual_all_four_constraints_on_cuda(tmp_path):
    summary, rows = _rows(tmp_path, "method=primal_dual", ALL4, *FAST_ROLLOUT, "train.steps=4")
    assert len(rows) == 4
    for prev, row in zip(rows, rows[1:]):
        for c in ("toxicity", "refusal", "kl_budget", "length"):
            assert row[f"lambda/{c}"] == prev[f"lambda_next/{c}"]
            assert math.isfinite(row[f"g/{c}"])
    # the length estimate is a mean token count of real rollouts: at least one token
    assert all(1.0 <= r["g/length"] <= 6.0 for r in rows)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_fsdp2_primal_dual_on_two_gpus_lambda_identical_and_resumes(tmp_path):
    """train.sharding=fsdp2 on two GPUs (torchrun, nccl), every constraint kind: lambda the same
    on both ranks in the checkpoint, the trajectory within bf16 noise of DDP's, the sharded
    state resumed (tests/test_fsdp.py runs the same on two CPU ranks)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("ACCELERATE_USE_FSDP", None)

    def run(name, *extra):
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "-m",
               "pdalign.cli.train", *tiny_overrides("method=primal_dual", ALL4, *FAST_ROLLOUT),
               "train.checkpoint_every=2", f"hydra.run.dir={tmp_path / name}", *extra]
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        return split_records(read_metrics(tmp_path / name / "metrics.jsonl"))[0]

    ddp = run("ddp", "train.steps=4", "train.sharding=ddp")
    fsdp = run("fsdp", "train.steps=4", "train.sharding=fsdp2")
    ranks = torch.load(tmp_path / "fsdp" / "checkpoints" / "step-4" / "state" /
                       "custom_checkpoint_0.pkl", weights_only=False)
    assert ranks["world_size"] == 2
    assert ranks["ranks"][0]["dual"]["lam"].equal(ranks["ranks"][1]["dual"]["lam"])
    for a, b in zip(ddp, fsdp):
        for k in a:
            if k.startswith(("lambda/", "g/")):
                assert b[k] == pytest.approx(a[k], rel=2e-2, abs=2e-3), (a["step"], k)
    rows = run("fsdp", "train.steps=6", "train.sharding=fsdp2", "train.resume=auto")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
