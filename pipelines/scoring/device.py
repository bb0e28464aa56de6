"""Which torch device scores, and how its failures are recognised."""

from __future__ import annotations

import logging
from typing import Literal

import torch

log = logging.getLogger(__name__)


Precision = Literal["auto", "fp32", "bf16"]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when usable, else CPU; an explicit ``cuda`` without a GPU falls back loudly."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available; scoring on CPU", name)
        return torch.device("cpu")
    return torch.device(name)


def is_oom(err: BaseException) -> bool:
    """An out-of-memory error of torch (CUDA or a CPU allocation)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
