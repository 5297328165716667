"""A tiny but real training loop whose every draw comes from the RNGs a checkpoint saves."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn


class Trainer:
    """MLP + dropout + AdamW + LR schedule on fixed synthetic data."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2, weight_decay=0.1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 0.95**s)
        data = torch.Generator().manual_seed(42)
        self.x = torch.randn(256, 8, generator=data)
        self.y = self.x.sum(dim=1, keepdim=True).sin()

    def step(self) -> float:
        rows = random.sample(range(256), 16) + list(np.random.randint(0, 256, size=16))
        pred = self.model(self.x[rows]) + 0.01 * torch.randn(32, 1)
        loss = nn.functional.mse_loss(pred, self.y[rows])
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.item())

    def run(self, steps: int) -> list[float]:
        return [self.step() for _ in range(steps)]


def reseed(seed: int) -> None:
    """Scramble every RNG, as a fresh process would."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
