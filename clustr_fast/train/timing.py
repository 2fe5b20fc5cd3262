"""Wall-clock timers that wait for the GPU, so a region's time is its own."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class Timer:
    """Sums seconds per named region: ``with timer("loss"): ...``; ``timer.seconds["loss"]``."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = defaultdict(float)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, name):
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] += time.perf_counter() - t0
