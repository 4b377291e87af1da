"""What the PyTorch models share when they fit: the device, the optimisers, the batches and
the training figures they report (``train_stats_``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np


def device(setting: str) -> Any:
    """``auto`` (the GPU when present, else the CPU), ``cpu`` or ``cuda``."""
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


class Trainer:
    """SparseAdam on the embeddings whose parameter names start with ``sparse`` (sparse
    gradients: a step touches its batch's rows, not the whole catalogue), Adam on the rest; it
    counts steps, examples, loss and time for :meth:`stats`."""

    def __init__(
        self, model: Any, sparse: tuple[str, ...], lr: float, weight_decay: float = 0.0
    ) -> None:
        import torch

        named = list(model.named_parameters())
        self.optimizers = [
            torch.optim.SparseAdam([p for n, p in named if n.startswith(sparse)], lr=lr),
            torch.optim.Adam(
                [p for n, p in named if not n.startswith(sparse)],
                lr=lr,
                weight_decay=weight_decay,
            ),
        ]
        self.steps, self.seen, self.loss_sum = 0, 0, 0.0
        self.start = time.perf_counter()

    @staticmethod
    def batches(
        rng: np.random.Generator, n: int, epochs: int, max_examples: int, batch_size: int
    ) -> Iterator[Any]:
        """Each epoch, a seeded draw of at most ``max_examples`` of the ``n`` examples, in
        batches of ``batch_size`` (a last batch of one is left out)."""
        import torch

        for _epoch in range(epochs if n else 0):
            order = torch.from_numpy(rng.permutation(n)[:max_examples])
            for b in range(0, len(order), batch_size):
                if len(order[b : b + batch_size]) >= 2:
                    yield order[b : b + batch_size]

    def step(self, loss: Any, examples: int) -> None:
        """One optimisation step on ``loss``, over a batch of ``examples``."""
        for opt in self.optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        self.steps += 1
        self.seen += examples
        self.loss_sum += float(loss.detach())

    def stats(self, examples: int, on: Any) -> dict[str, float]:
        """The figures a fitted model reports: its examples, steps, seconds, examples/s, mean
        loss and whether it ran on a GPU."""
        seconds = time.perf_counter() - self.start
        return {
            "examples": float(examples),
            "steps": float(self.steps),
            "seconds": seconds,
            "examples_per_second": self.seen / max(seconds, 1e-9),
            "final_mean_loss": self.loss_sum / max(self.steps, 1),
            "device": 1.0 if on.type == "cuda" else 0.0,
        }
