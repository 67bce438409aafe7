"""Precision, chosen at start by the device and never assumed: bf16 autocast only where bf16
matmul is native and fast (CUDA with bf16, a CPU with AMX or AVX512-BF16), fp32 otherwise."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import torch


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it is not available)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                     if line.startswith("flags")), []))


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matmul units (AMX or AVX512-BF16).

    On an AVX2-only CPU, bf16 matmul is emulated and ~120x slower than fp32 (measured on an
    AMD EPYC: 0.0013 vs 0.162 TFLOP/s), so it must never be chosen there.
    """
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


# Forces what ``auto`` answers on a CPU (fp32 | bf16), so the suite can run as an AVX2-only
# machine (fp32) or an AMX / AVX512-BF16 one (bf16) would: `PDALIGN_TEST_DTYPE=bf16 make test`.
FORCE_DTYPE_ENV = "PDALIGN_TEST_DTYPE"


def resolve_dtype(name: str = "auto", device: str = "cpu") -> torch.dtype:
    """Pick the autocast dtype: ``auto`` takes bf16 only where it is native and fast.

    On a CPU, ``$PDALIGN_TEST_DTYPE`` (fp32 | bf16), when set, replaces the CPU-flag rule's
    answer for ``auto``; explicit ``fp32`` / ``bf16`` are never overridden.

    Args:
        name: ``auto`` | ``fp32`` | ``bf16``.
        device: ``cpu`` or ``cuda``.
    Returns torch.float32 (no autocast) or torch.bfloat16.
    """
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16}
    if name in table:
        return table[name]
    if name != "auto":
        raise ValueError(f"train.dtype={name!r} is not one of auto, fp32, bf16")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    forced = os.environ.get(FORCE_DTYPE_ENV)
    if forced:  # run as another CPU kind would: the rule's answer, not the hardware's
        if forced not in ("fp32", "bf16"):
            raise ValueError(f"{FORCE_DTYPE_ENV}={forced!r} is not one of fp32, bf16 (unset it "
                             f"to let train.dtype=auto decide from the CPU's flags)")
        return table[forced]
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def autocast(dtype: torch.dtype, device: str = "cpu"):
    """An autocast context for ``dtype`` (a no-op for fp32)."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)
