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


class GlobalPool(nn.Module):
    """Convs, a global average pool written as x.mean((2, 3)), and a linear head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.head(y.mean((2, 3)))


def global_pool():
    torch.manual_seed(0)
    return GlobalPool()


class Block(nn.Module):
    """A ResNet basic block (BatchNorm, identity or 1x1 downsample shortcut)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        idt = x if self.down is None else self.down(x)
        return torch.relu(y + idt)


class MiniResNet(nn.Module):
    """Two ResNet stages of basic blocks, the second with a strided 1x1 downsample."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(Block(16, 16, 1), Block(16, 16, 1))
        self.layer2 = nn.Sequential(Block(16, 32, 2), Block(32, 32, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def mini_resnet():
    torch.manual_seed(0)
    return MiniResNet()


class ChannelScale(nn.Module):
    """A learned per-channel scale applied with a plain multiply (a parameter, no layer)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.head = nn.Linear(8 * 64, 10)

    def forward(self, x):
        return self.head((self.conv(x) * self.scale).flatten(1))


def channel_scale():
    torch.manual_seed(0)
    return ChannelScale()


class GroupNormNet(nn.Module):
    """Convolutions normalized by GroupNorm (as in diffusion U-Nets and audio nets), one of
    them read by a grouped convolution."""

    def __init__(self, mid_groups: int = 8, grouped_groups: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3)  # no padding: a consumer's bias repair is exact
        self.gn_stem = nn.GroupNorm(4, 16)
        self.mid = nn.Conv2d(16, 16, 3)
        self.gn_mid = nn.GroupNorm(mid_groups, 16)
        self.grouped = nn.Conv2d(16, 16, 1, groups=grouped_groups)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.gn_stem(self.stem(x)))
        y = torch.nn.functional.silu(self.gn_mid(self.mid(y)))
        return self.head(torch.relu(self.grouped(y)).mean((2, 3)))


def group_norm():
    torch.manual_seed(0)
    return GroupNormNet()


def group_norm_straddled():
    """``gn_mid``'s groups of 4 channels straddle the grouped conv's 8 groups of 2."""
    torch.manual_seed(0)
    return GroupNormNet(mid_groups=4, grouped_groups=8)
