"""Small models with a residual add and a concatenation (factories for structured tests)."""

import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, norms: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn_stem = nn.BatchNorm2d(16) if norms else nn.Identity()
        self.conv_a = nn.Conv2d(16, 12, 3, padding=1)
        self.conv_b = nn.Conv2d(12, 16, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(16) if norms else nn.Identity()
        self.head = nn.Linear(16 * 64, 10)

    def forward(self, x):
        y = torch.relu(self.bn_stem(self.stem(x)))
        y = y + self.bn_b(self.conv_b(torch.relu(self.conv_a(y))))
        return self.head(torch.relu(y).flatten(1))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Conv2d(1, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(16 * 64, 10)

    def forward(self, x):
        y = torch.relu(self.pre(x))
        return self.head(torch.cat([self.left(y), self.right(y)], 1).flatten(1))


def residual():
    torch.manual_seed(0)
    return Residual()


def residual_plain():
    torch.manual_seed(0)
    return Residual(norms=False)


def concat():
    torch.manual_seed(0)
    return Concat()
