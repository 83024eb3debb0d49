"""Seeding and device choice, used at the top of every page and exercise.

Book: every chapter (the first code cell of each page).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["get_device", "seed_everything"]


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) so that outputs repeat run to run."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def get_device(prefer: str | None = None) -> torch.device:
    """The device a page should run on: `prefer` if given, else CUDA when present, else CPU.

    Pages keep their CPU configuration small and may pick a larger preset when this
    returns a GPU.
    """
    if prefer is not None:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
