"""Model loading: embedded GGUF -> cached directory, tiny model, dtype rule, LoRA and QLoRA."""

import pytest
import torch

from pdalign.policy import models, precision
from pdalign.policy.models import EMBEDDED, apply_peft, build_tiny, load_model
from pdalign.policy.precision import resolve_dtype


@pytest.mark.slow
def test_gguf_dequantized_cache_reloads_with_identical_logits(tmp_path, monkeypatch):
    """GGUF -> save_pretrained dir -> reload gives exactly the GGUF model's logits."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("PDALIGN_CACHE", str(tmp_path))
    cached_dir = models.embedded_dir()  # builds the cache in tmp_path (~20-35 s)
    assert (cached_dir / "model.safetensors").is_file()
    assert not list(cached_dir.parent.glob(".smollm2-*")), "temp dir left behind"
    gguf = models.embedded_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    reloaded, tokenizer = load_model(EMBEDDED)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}],
                                         tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = direct(ids).logits, reloaded(ids).logits
    assert torch.equal(a, b)
    assert "quantization_config" not in (cached_dir / "config.json").read_text()


def test_tiny_model_is_seeded_and_shares_the_real_tokenizer():
    a, tok = load_model("tiny", tiny={"seed": 3})
    b, _ = load_model("tiny", tiny={"seed": 3})
    c, _ = load_model("tiny", tiny={"seed": 4})
    assert len(tok) == 49152 and tok.pad_token_id is not None and tok.padding_side == "right"
    assert tok.chat_template
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])


def test_unknown_model_path_names_the_fix():
    with pytest.raises(FileNotFoundError, match="model.name_or_path='no-such-model'.*model=tiny"):
        load_model("no-such-model")


def test_dtype_rule_by_cpu_capability(monkeypatch):
    monkeypatch.delenv(precision.FORCE_DTYPE_ENV, raising=False)  # the rule itself, unforced
    assert resolve_dtype("fp32") == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ValueError, match="train.dtype='fp16'"):
        resolve_dtype("fp16")


def test_forced_dtype_replaces_the_auto_answer_on_cpu_only(monkeypatch):
    """PDALIGN_TEST_DTYPE runs the suite as another CPU kind would: it replaces what auto
    answers on a CPU, never an explicit dtype, never CUDA's rule; a bad value names itself."""
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setenv(precision.FORCE_DTYPE_ENV, "bf16")
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_dtype("fp32", "cpu") == torch.float32
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setenv(precision.FORCE_DTYPE_ENV, "fp32")
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    monkeypatch.setenv(precision.FORCE_DTYPE_ENV, "fp16")
    with pytest.raises(ValueError, match=r"^PDALIGN_TEST_DTYPE='fp16' is not one of fp32, bf16"):
        resolve_dtype("auto", "cpu")


def test_cpu_capability_matches_proc_cpuinfo():
    with open("/proc/cpuinfo") as fh:
        flags = fh.read()
    expected = "amx_bf16" in flags or "avx512_bf16" in flags
    assert precision.cpu_has_fast_bf16() is expected


def test_lora_trains_only_the_adapter():
    model = apply_peft(build_tiny(101), {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                         "target_modules": ["q_proj", "k_proj", "v_proj",
                                                            "o_proj"]})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 4 * 2  # A and B, 4 projections, 2 layers


def test_qlora_nf4_forward_backward_and_8bit_adamw_on_cpu():
    """bitsandbytes nf4 + double quant + LoRA + AdamW8bit: one real optimizer step."""
    import bitsandbytes as bnb

    from pdalign.policy.logprobs import sequence_logps

    quant = models.bnb_4bit_config(torch.float32)
    model, _ = load_model("tiny", tiny={"hidden_size": 64}, quantization=quant)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    model = apply_peft(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                       quantized=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = bnb.optim.AdamW8bit(params, lr=1e-2)
    ids = torch.randint(0, 1000, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    before = [p.detach().clone() for p in params]
    out = sequence_logps(model, ids, torch.ones_like(ids), labels)
    (-out.logps.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, params))


def test_qlora_gradients_unchanged_by_an_eval_forward_without_grad():
    """A reference pass, a rollout or the held-out evaluation (eval mode, no grad) before a
    training step must not change the step: the same LoRA gradients, every 4-bit weight in its
    training layout. Where bitsandbytes would repack the weights for CPU inference (AVX512-BF16
    or AMX CPUs) the gradient through the 4-bit layers was lost; elsewhere nothing repacks."""
    import bitsandbytes as bnb

    from pdalign.policy.logprobs import sequence_logps

    torch.manual_seed(0)
    quant = models.bnb_4bit_config(torch.float32)
    model, _ = load_model("tiny", tiny={"hidden_size": 64}, quantization=quant)
    model = apply_peft(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                       quantized=True)
    for p in model.parameters():  # B = 0 at init would hide the gradient through lower layers
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    params = [p for p in model.parameters() if p.requires_grad]
    ids = torch.randint(0, 1000, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100

    def grads():
        model.train()
        model.zero_grad()
        out = sequence_logps(model, ids, torch.ones_like(ids), labels)
        (-out.logps.sum()).backward()
        return [p.grad.detach().clone() for p in params]

    before = grads()
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        model(input_ids=ids)
    after = grads()
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                              for m in layers)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
def test_qlora_dequantized_once_gives_the_same_numbers_and_leaves_the_layers_as_they_were(
        compute, monkeypatch):
    """Inside `dequantized_4bit_once` a 4-bit model's forward without gradients computes with
    each weight dequantized once, by bitsandbytes' own ops: the logits and the sampled tokens are
    bit-identical to its per-call path, in fp32 and under bf16 autocast; on exit every layer has
    its own forward back; a forward that needs gradients inside the block is refused."""
    import contextlib

    import bitsandbytes as bnb

    import pdalign.policy.sampling as sampling
    from pdalign.policy.precision import autocast

    torch.manual_seed(0)
    model, tok = load_model("tiny", tiny={"hidden_size": 64},
                            quantization=models.bnb_4bit_config(compute))
    model = apply_peft(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                       quantized=True)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    ids = torch.randint(0, 1000, (3, 9))
    model.eval()
    with torch.no_grad(), autocast(compute, "cpu"):
        per_call = model(input_ids=ids).logits
        with models.dequantized_4bit_once(model) as n:
            assert n == len(layers) > 0 and all("forward" in vars(m) for m in layers)
            once = model(input_ids=ids).logits
            with models.dequantized_4bit_once(model) as inner:  # re-entrant
                assert inner == 0
            assert all("forward" in vars(m) for m in layers)
        assert torch.equal(once, per_call)
    assert not any("forward" in vars(m) for m in layers)
    gen = {"max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0, "batch_size": 2, "seed": 3}
    with autocast(compute, "cpu"):  # generate dequantizes once by itself
        once = sampling.generate(model, tok, ["hi", "What is 2 + 2?"], **gen)
        monkeypatch.setattr(sampling, "dequantized_4bit_once",
                            lambda m: contextlib.nullcontext(0))
        per_call = sampling.generate(model, tok, ["hi", "What is 2 + 2?"], **gen)
    assert once.responses == per_call.responses and torch.equal(once.input_ids,
                                                                per_call.input_ids)
    x = torch.randn(2, 64, requires_grad=True)
    with models.dequantized_4bit_once(model), pytest.raises(RuntimeError, match="without grad"):
        layers[0](x)


@pytest.mark.parametrize("quantized,compute", [(False, torch.float32), (False, torch.bfloat16),
                                               (True, torch.float32), (True, torch.bfloat16)])
def test_lora_merged_once_computes_base_plus_adapter_and_restores_the_layers(quantized, compute):
    """Inside `lora_merged_once` each LoRA projection computes with one weight, base + s·B·A:
    its logits sit within rounding of the unmerged forward's (1.5% of what the adapter itself
    moves them, in bf16; 1e-5 in fp32), a layer whose adapter is disabled inside the block gives
    the base model's logits, a forward with gradients is refused, and on exit every layer has
    its own forward back."""
    from peft.tuners.lora.layer import LoraLayer

    from pdalign.policy.precision import autocast

    torch.manual_seed(0)
    quant = {"quantization": models.bnb_4bit_config(compute)} if quantized else {}
    model, _ = load_model("tiny", tiny={"hidden_size": 64}, **quant)
    model = apply_peft(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                       quantized=quantized)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    with torch.no_grad():
        for m in layers:  # a trained adapter: B is zero at initialization
            m.lora_B["default"].weight.normal_(0, 0.5)
    ids = torch.randint(0, 1000, (3, 9))
    model.eval()
    with torch.no_grad(), autocast(compute, "cpu"):
        unmerged = model(input_ids=ids).logits.float()
        with model.disable_adapter():
            base = model(input_ids=ids).logits.float()
        with models.lora_merged_once(model) as n:
            assert n == len(layers) == 4 and all("forward" in vars(m) for m in layers)
            merged = model(input_ids=ids).logits.float()
            with model.disable_adapter():
                disabled = model(input_ids=ids).logits.float()
            with models.lora_merged_once(model) as inner:  # re-entrant
                assert inner == 0
    moved = (unmerged - base).abs().max()
    assert moved > 0.1
    error = (merged - unmerged).abs().max()
    # bf16: under 1% of the adapter's effect (the merged weight's rounding); 10% off s·B·A fails
    assert error < (1e-5 if compute == torch.float32 else 0.015 * moved), (error, moved)
    torch.testing.assert_close(disabled, base, rtol=0, atol=1e-6)
    assert not any("forward" in vars(m) for m in layers)
    x = torch.randn(2, 64, requires_grad=True)
    with models.lora_merged_once(model), pytest.raises(RuntimeError, match="without grad"):
        layers[0](x)


def test_qlora_failure_names_peft_lora(monkeypatch):
    import bitsandbytes as bnb

    def broken(*args, **kwargs):
        raise RuntimeError("no 4-bit kernels")

    monkeypatch.setattr(bnb.nn, "Linear4bit", broken)
    with pytest.raises(RuntimeError, match="Use peft=lora"):
        models.bnb_4bit_config()


def test_embedded_chat_template_round_trip():
    tok = models.load_tokenizer(EMBEDDED)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


def test_missing_local_dir_or_offline_hub_id_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="model.name_or_path='nobody/no-model'.*Offline"):
        load_model("nobody/no-model")
