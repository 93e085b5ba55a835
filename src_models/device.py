"""The one device and precision policy: CUDA when present, else the CPU."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``/``None``/``"cpu"``/``"cuda"``/``"cuda:1"`` into a usable device.

    ``auto`` picks CUDA when a GPU is visible. Asking for CUDA without one is an error that says so.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {spec!r}: use 'auto', 'cpu' or 'cuda'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but no CUDA GPU is visible; use 'cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {spec!r}: use 'auto', 'cpu' or 'cuda'")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with bf16 instructions (AVX512-BF16 or AMX), read from /proc/cpuinfo.

    Elsewhere bf16 arithmetic is emulated and slower than float32, so it is never used.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(
    device: torch.device, enabled: bool = True, cpu_bf16: bool = False
) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA when ``enabled`` (bf16 where supported, else fp16); on the CPU
    full precision unless ``cpu_bf16`` (bf16 autocast, only with :func:`cpu_has_native_bf16`)."""
    if device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16():
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)
