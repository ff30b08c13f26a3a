"""Choosing the device and the mixed-precision mode, and recognising device failures."""

from __future__ import annotations

from typing import Optional

import torch


class DeviceError(Exception):
    """The requested device cannot be used; the message says what to do instead."""


def resolve_device(spec: str) -> torch.device:
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec} was requested but this torch ({torch.__version__}) sees no CUDA GPU")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
        return dev
    raise DeviceError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")


def amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """None (full precision), torch.float16 or torch.bfloat16 for autocast."""
    if mode == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    if mode == "off":
        return None
    return torch.bfloat16 if mode == "bf16" else torch.float16


def precision_reason(mode: str, device: torch.device) -> tuple:
    """(precision, why) in words for the `start` event, e.g. ("fp32", "fp32: this CPU has no AMX/AVX512-BF16 ...")."""
    dtype = amp_dtype(mode, device)
    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if mode != "auto":
        return name, f"{name}: --amp {mode}" + (" (autocast)" if dtype is not None else "")
    if device.type == "cuda":
        return name, "fp16: automatic mixed precision, the default on CUDA (--amp off for fp32)"
    if dtype is not None:
        return name, "bf16 autocast: this CPU has AMX/AVX512-BF16, where bf16 is about twice as fast (--amp off for fp32)"
    return name, ("fp32: this CPU has no AMX/AVX512-BF16, so bf16 autocast would be slower than fp32 here "
                  "(--amp bf16 forces it)")


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 autocast roughly halves a training step."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch
        return False


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def is_cuda_error(e: BaseException) -> bool:
    s = str(e)
    return "CUDA" in s or "cuDNN" in s or "NCCL" in s


def free_device_bytes(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import os
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
