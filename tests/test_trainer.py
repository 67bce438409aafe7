"""The training loop on the tiny model: every method learns, reference use is exactly as needed."""

import json

import pytest
import torch

import pdalign.policy.logprobs
import pdalign.policy.reference
import pdalign.training.build
import pdalign.training.trainer
from pdalign.runfiles.metrics import read_metrics, split_records
from pdalign.training.trainer import train
from tests.conftest import BF16, FP32, auto_dtype, compose, rel_tol, tiny_overrides


def _count_calls(monkeypatch, name: str, module=None) -> list:
    """Wrap ``<module>.<name>`` (default `pdalign.policy.logprobs`) so each call appends to
    the returned list."""
    module = module or pdalign.policy.logprobs
    calls = []
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def _run(tmp_path, *overrides, name="run"):
    cfg = compose(tiny_overrides(*overrides))
    summary = train(cfg, tmp_path / name)
    return summary, split_records(read_metrics(tmp_path / name / "metrics.jsonl"))[0]


@pytest.mark.parametrize("method", ["dpo", "ipo", "simpo", "orpo"])
def test_short_lora_run_moves_reward_margins_up(tmp_path, method):
    summary, rows = _run(tmp_path, f"method={method}", "train.steps=16")
    assert summary["steps"] == 16 and len(rows) == 16
    first = sum(r["rewards/margins"] for r in rows[:3]) / 3
    last = sum(r["rewards/margins"] for r in rows[-3:]) / 3
    assert last > first + 1e-3, (method, first, last)
    assert all(r["step"] == i + 1 for i, r in enumerate(rows))


@pytest.mark.parametrize("method", ["orpo", "simpo"])
def test_reference_free_methods_never_run_the_reference(tmp_path, monkeypatch, method):
    def forbidden(*args, **kwargs):
        raise AssertionError("reference forward ran for a reference-free method")

    for module in (pdalign.policy.logprobs, pdalign.policy.reference):
        monkeypatch.setattr(module, "reference_mode", forbidden)
    for module in (pdalign.policy.reference, pdalign.training.trainer):
        monkeypatch.setattr(module, "reference_logps", forbidden)
    summary, _ = _run(tmp_path, f"method={method}", "train.steps=2",
                      "train.precompute_ref_logps=true")
    assert summary["steps"] == 2


def test_dpo_does_run_the_reference(tmp_path, monkeypatch):
    calls = _count_calls(monkeypatch, "reference_mode")
    _run(tmp_path, "method=dpo", "train.steps=2")
    assert len(calls) == 2  # once per step, inside the policy forward


SHARED_KEYS = {"dpo": ("loss", "rewards/margins"),
               "primal_dual": ("loss", "rewards/margins", "g/kl_budget", "lambda_next/kl_budget")}


@pytest.mark.parametrize("dtype,rel", [(FP32, 1e-4), (BF16, rel_tol(torch.bfloat16))],
                         ids=["fp32", "bf16"])
@pytest.mark.parametrize("method", ["dpo", "primal_dual"])
def test_shared_prompt_trains_like_full_rows(tmp_path, monkeypatch, method, dtype, rel):
    """train.share_prompt runs each pair's prompt once; the run is the same run (losses, and
    for primal-dual the KL estimate and lambda, equal to float rounding). Algebra, so fp32
    with a tight tolerance; bf16 rounds the prompt's states before the cache feeds them on
    (0.59822 vs 0.59831 after 3 steps on an AVX512-BF16 EPYC), so it takes bf16's."""
    shared_calls = _count_calls(monkeypatch, "_shared_prompt_states")
    # a KL budget small enough that lambda leaves 0, so the lambda comparison is not 0 == 0
    constraints = (["constraints=[kl_budget]", "constraints.kl_budget.epsilon=1e-4"]
                   if method == "primal_dual" else [])
    runs = {}
    for share in (True, False):
        _, runs[share] = _run(tmp_path, f"method={method}", "train.steps=3", dtype, *constraints,
                              f"train.share_prompt={str(share).lower()}", name=str(share))
        if share:  # policy and reference forward of each of the 3 steps (+ held-out eval)
            assert len(shared_calls) >= 6
            shared_calls.clear()
    assert not shared_calls  # share_prompt=false never takes the shared path
    assert len(runs[True]) == len(runs[False]) == 3
    for a, b in zip(runs[True], runs[False]):
        for key in SHARED_KEYS[method]:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-5), key
    if method == "primal_dual":  # the KL half is not vacuous: lambda moved off zero
        assert runs[True][-1]["lambda_next/kl_budget"] > 0


def test_precomputed_reference_equals_on_the_fly(tmp_path):
    """Cached reference log-probs give the same losses as computing them in the step (two
    code paths for one number: fp32)."""
    cache = f"train.ref_cache_dir={tmp_path / 'cache'}"
    _, live = _run(tmp_path, "method=dpo", "train.steps=4", FP32, name="live")
    _, cached = _run(tmp_path, "method=dpo", "train.steps=4", "train.precompute_ref_logps=true",
                     FP32, cache, name="cached")
    files = list((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 1
    for a, b in zip(live, cached):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    # a changed tokenization setting is a new key: a second file, not a stale hit
    _run(tmp_path, "method=dpo", "train.steps=1", "train.precompute_ref_logps=true",
         "data.max_length=44", FP32, cache, name="short")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_cached_reference_values_match_a_direct_reference_forward(tmp_path):
    from pdalign.data.features import PreferenceCollator, build_dataset
    from pdalign.policy.models import apply_peft, load_model
    from tests.conftest import FIXTURES

    model, tok = load_model("tiny")
    model = apply_peft(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    feats, _, _ = build_dataset(tok, str(FIXTURES / "pairs.jsonl"), max_length=64)
    feats = feats[:6]
    collate = PreferenceCollator(tok.pad_token_id)
    cached = pdalign.policy.reference.precompute_reference(model, feats, collate, tmp_path / "r.pt",
                                                   batch_size=4, progress=False)
    batch = collate(feats)
    direct = pdalign.policy.reference.reference_logps(model, batch["input_ids"],
                                              batch["attention_mask"], batch["labels"])
    got = torch.tensor([f["ref_chosen_logps"] for f in cached]
                       + [f["ref_rejected_logps"] for f in cached])
    torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-4)


def test_consumed_positions_are_the_loaders_first_batches():
    from pdalign.training.build import consumed_positions

    n, bs, seed = 23, 4, 7  # 5 whole batches per epoch, 3 pairs dropped
    loader = torch.utils.data.DataLoader(list(range(n)), batch_size=bs, shuffle=True,
                                         drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    drawn = [int(i) for batch in loader for i in batch]
    assert consumed_positions(n, bs, 12, seed) == drawn[:12]
    assert consumed_positions(n, bs, 20, seed) is None  # the whole epoch: every pair
    assert consumed_positions(n, bs, 12, seed + 1) != drawn[:12]


def test_precompute_covers_only_the_pairs_a_short_run_reads(tmp_path, monkeypatch):
    """A 3-step run fills the cache for its 12 pairs and leaves the rest NaN; a longer run
    with the same cache computes only the pairs it adds; a pair the cache lacks at step time
    (a prediction that fell short) is computed in the step, and the losses still equal the
    on-the-fly reference's (fp32)."""

    cache = f"train.ref_cache_dir={tmp_path / 'cache'}"
    _, live = _run(tmp_path, "method=dpo", "train.steps=6", FP32, name="live")
    _run(tmp_path, "method=dpo", "train.steps=3", "train.precompute_ref_logps=true", FP32,
         cache, name="short")
    (file,) = (tmp_path / "cache").glob("*.pt")
    table = torch.load(file, weights_only=True)
    done = ~table.isnan().any(dim=1)
    assert int(done.sum()) == 12 and table.shape[0] > 12
    # the precompute's and the step's
    calls = _count_calls(monkeypatch, "reference_logps", pdalign.policy.reference)
    monkeypatch.setattr(pdalign.training.trainer, "reference_logps",
                        pdalign.policy.reference.reference_logps)
    # 6 steps read 24 pairs: 12 new ones, 3 precompute batches of 4; no reference in the step
    _, cached = _run(tmp_path, "method=dpo", "train.steps=6", "train.precompute_ref_logps=true",
                     FP32, cache, name="longer")
    assert len(calls) == 3
    assert int((~torch.load(file, weights_only=True).isnan().any(dim=1)).sum()) == 24
    for a, b in zip(live, cached):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    # a fresh cache told the run reads only its first 8 pairs: steps 3 to 6 compute their own
    planned = pdalign.training.build.consumed_positions
    monkeypatch.setattr(pdalign.training.build, "consumed_positions",
                        lambda n, bs, draws, seed: planned(n, bs, 8, seed))
    calls.clear()
    _, fallback = _run(tmp_path, "method=dpo", "train.steps=6", "train.precompute_ref_logps=true",
                       FP32, f"train.ref_cache_dir={tmp_path / 'other'}", name="fallback")
    assert len(calls) == 2 + 4  # two precompute batches, then one per uncovered step
    for a, b in zip(live, fallback):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_run_writes_resolved_config_free_metrics_and_a_checkpoint(tmp_path):
    summary, rows = _run(tmp_path, "method=dpo", "train.steps=3")
    ckpt = tmp_path / "run" / "checkpoints" / "step-3"
    assert (ckpt / "trainer_state.pt").is_file()
    assert (ckpt / "model" / "adapter_model.safetensors").is_file()
    assert summary["dtype"] in ("float32", "bfloat16")
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "rewards/margins"} <= set(rows[0])
    json.dumps(rows)  # every value is JSON-serializable


def test_manifest_records_hashes_versions_and_hardware(tmp_path):
    import hashlib

    from tests.conftest import FIXTURES

    _run(tmp_path, "method=primal_dual", "constraints=[refusal]", "train.steps=1",
         "train.rollout.prompts_per_rollout=2", "train.rollout.max_new_tokens=4")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    pairs = str((FIXTURES / "pairs.jsonl").resolve())
    assert manifest["data_hashes"][pairs] == hashlib.sha256(
        (FIXTURES / "pairs.jsonl").read_bytes()).hexdigest()
    assert any(p.endswith("adversarial.jsonl") for p in manifest["data_hashes"])
    assert manifest["seed"] == 0 and manifest["versions"]["torch"] == torch.__version__
    assert manifest["hardware"]["cpu"]["model"] and manifest["config"]["method"]["name"] == (
        "primal_dual")
    assert manifest["dtype"] in ("float32", "bfloat16")


def test_share_prompt_auto_shares_on_cpu_only_and_bad_values_name_the_key():
    from pdalign.training.trainer import resolve_share_prompt

    assert resolve_share_prompt("auto", "cpu") is True
    assert resolve_share_prompt("auto", "cuda") is False
    assert resolve_share_prompt(False, "cpu") is False and resolve_share_prompt(True, "cuda")
    with pytest.raises(ValueError, match=r"^train.share_prompt='yes' is not one of true, false, "
                                         r"auto"):
        resolve_share_prompt("yes", "cpu")


def test_default_config_takes_the_shared_path_on_cpu(tmp_path, monkeypatch):
    calls = _count_calls(monkeypatch, "_shared_prompt_states")
    _run(tmp_path, "method=dpo", "train.steps=1")
    assert len(calls) >= 2  # the policy and the reference forward of the one step


@pytest.mark.parametrize("method", ["dpo", "primal_dual"])
def test_grad_accum_two_half_batches_equal_one_full_batch(tmp_path, method):
    """grad_accum=2 over micro-batches of 2 is the batch of 4 in one go: the sampler draws the
    same epoch order (same seed), so micro-batches 1-2 are batch 1's pairs; the loss, each
    gradient and the constraint estimate g are means over pairs, and accelerate divides each
    micro-batch's loss by 2. So the step, the logged loss, g and lambda agree to fp32 rounding
    (padding to another width changes only rounding). Algebra: fp32."""
    extra = ["method=" + method, "train.steps=3", FP32]
    if method == "primal_dual":
        extra += ["constraints=[kl_budget]", "constraints.kl_budget.epsilon=1e-4"]
    _, whole = _run(tmp_path, *extra, "train.batch_size=4", name="whole")
    _, accum = _run(tmp_path, *extra, "train.batch_size=2", "train.grad_accum=2", name="accum")
    assert len(whole) == len(accum) == 3
    keys = ["loss", "loss/pref", "rewards/margins", "grad_norm"]
    if method == "primal_dual":
        keys += ["g/kl_budget", "lambda_next/kl_budget"]
        assert whole[-1]["lambda_next/kl_budget"] > 0
    for a, b in zip(whole, accum):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    # and the run did move: a later step's loss differs from the first
    assert abs(whole[-1]["loss/pref"] - whole[0]["loss/pref"]) > 1e-3


def test_qlora_trains_through_train_on_cpu(tmp_path):
    """peft=qlora on the tiny model: the base's linear layers are bitsandbytes nf4 (double
    quantized), the LoRA adapters train with 8-bit AdamW, and the run learns (margins up), on
    the CPU where bitsandbytes 0.50 runs nf4. The dtype is the auto rule's (the compute dtype
    of the 4-bit layers follows it)."""
    import bitsandbytes as bnb

    seen = {}
    real = pdalign.training.build.apply_peft

    def spy(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        seen["4bit"] = sum(isinstance(m, bnb.nn.Linear4bit) for m in out.modules())
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pdalign.training.build, "apply_peft", spy)
        summary, rows = _run(tmp_path, "peft=qlora", "method=dpo", "train.steps=8")
    assert seen["4bit"] >= 8  # q,k,v,o of both layers at least
    assert summary["steps"] == 8 and summary["dtype"] == str(auto_dtype()).replace("torch.", "")
    cfg = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
    assert cfg["peft"]["quantize"] and cfg["peft"]["optimizer"] == "adamw_8bit"
    first = sum(r["rewards/margins"] for r in rows[:3]) / 3
    last = sum(r["rewards/margins"] for r in rows[-3:]) / 3
    assert last > first + 1e-3, (first, last)


@pytest.mark.parametrize("method", ["orpo", "dpo"])
def test_bf16_step_stays_within_bf16_rounding_of_the_fp32_step(tmp_path, method):
    """The bf16 counterpart for the objectives whose numerics differ in bf16 (ORPO's log-odds
    log(p/(1-p)) of mean log-probs near 0, DPO's log-ratio differences): the first two steps
    (same initial weights, same batches) in bf16 autocast and in fp32 agree within bf16's
    tolerance, and stay finite."""
    keys = {"orpo": ("loss", "log_odds_ratio", "nll"), "dpo": ("loss", "logps/chosen")}
    runs = {}
    for dtype in (FP32, BF16):
        summary, runs[dtype] = _run(tmp_path, f"method={method}", "train.steps=2", dtype,
                                    name=dtype.split("=")[1])
        assert summary["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[dtype.split("=")[1]]
    for a, b in zip(runs[FP32], runs[BF16]):
        for key in keys[method]:
            assert b[key] == pytest.approx(a[key], rel=rel_tol(torch.bfloat16), abs=2e-2), key


def test_frozen_base_held_in_bf16_changes_no_number_and_keeps_the_adapter_fp32(tmp_path):
    """train.hold_frozen_in_dtype (default true): under bf16 the frozen LoRA base layers are
    stored in bf16, so autocast stops casting them at every use; the matmuls see the same bf16
    values, so a primal-dual run (rollouts, KL, the opener kind) logs the same numbers as with
    the weights kept fp32. The adapter and its optimizer state stay fp32. bf16 is forced (the
    lever is off in fp32), so on an AVX2 machine this runs bf16 emulated: a 3-step tiny run."""
    from pdalign.training.trainer import setup

    common = ("method=primal_dual", "constraints=[kl_budget,refusal_openers,length]",
              "constraints.length.epsilon=5", "train.rollout.max_new_tokens=8",
              "eval.max_new_tokens=8", "train.rollout_every=2", "train.steps=3", BF16)
    runs = {}
    for hold in ("true", "false"):
        _, rows = _run(tmp_path, *common, f"train.hold_frozen_in_dtype={hold}", name=hold)
        runs[hold] = [{k: v for k, v in r.items() if not k.endswith(("time_s", "per_s"))}
                      for r in rows]
    assert runs["true"] and len(runs["true"]) == len(runs["false"]) == 3
    for a, b in zip(runs["true"], runs["false"]):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-7, abs=1e-9), key
    s, state = setup(compose(tiny_overrides(*common)), tmp_path / "parts")
    frozen = {p.dtype for n, p in s.policy.model.named_parameters()
              if not p.requires_grad and "proj" in n}
    assert frozen == {torch.bfloat16}
    assert {p.dtype for p in s.params} == {torch.float32}  # the adapter
    assert s.policy.model.get_output_embeddings().weight.dtype == torch.float32
    s.logger.close()
