"""PyTorch reference of the SyncTalk_2D models, written from docs/semantics.md §7 for the parity tests.

Module and attribute names follow the original code so ``state_dict()`` keys are exactly those of
real checkpoints (``tests/test_models_parity.py`` checks them against the spec key lists).
Test-only: fastgen itself never imports torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CH = [32, 64, 128, 256, 512]


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, use_res_connect, expand_ratio=2):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = use_res_connect
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class DoubleConvDW(nn.Module):
    def __init__(self, in_channels, out_channels, stride=2):
        super().__init__()
        self.double_conv = nn.Sequential(
            InvertedResidual(in_channels, out_channels, stride, False),
            InvertedResidual(out_channels, out_channels, 1, True),
        )

    def forward(self, x):
        return self.double_conv(x)


class InConvDw(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.inconv = nn.Sequential(InvertedResidual(in_channels, out_channels, 1, False))

    def forward(self, x):
        return self.inconv(x)


class Down(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(DoubleConvDW(in_channels, out_channels, stride=2))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConvDW(in_channels, out_channels, stride=1)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        dy, dx = x2.shape[2] - x1.shape[2], x2.shape[3] - x1.shape[3]
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x1, x2], dim=1))


class OutConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class _AudioConv(nn.Module):
    """conv1, conv2 (IR) → conv3/bn3/ReLU → conv4 (IR) → conv5/bn5/ReLU → conv6, conv7 (IR)."""

    def __init__(self, first, second, conv3_in, conv3_stride):
        super().__init__()
        self.conv1 = InvertedResidual(*first)
        self.conv2 = InvertedResidual(*second)
        self.conv3 = nn.Conv2d(conv3_in, CH[3], kernel_size=3, padding=1, stride=conv3_stride)
        self.bn3 = nn.BatchNorm2d(CH[3])
        self.conv4 = InvertedResidual(CH[3], CH[3], 1, True)
        self.conv5 = nn.Conv2d(CH[3], CH[4], kernel_size=3, padding=3, stride=2)
        self.bn5 = nn.BatchNorm2d(CH[4])
        self.relu = nn.ReLU()
        self.conv6 = InvertedResidual(CH[4], CH[4], 1, True)
        self.conv7 = InvertedResidual(CH[4], CH[4], 1, True)

    def forward(self, x):
        x = self.conv2(self.conv1(x))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.conv4(x)
        x = self.relu(self.bn5(self.conv5(x)))
        return self.conv7(self.conv6(x))


class AudioConvAve(_AudioConv):  # audio (B, 32, 16, 16)
    def __init__(self):
        super().__init__((CH[0], CH[1], 1, False), (CH[1], CH[2], 1, False), CH[2], 1)


class AudioConvHubert(_AudioConv):  # audio (B, 32, 32, 32)
    def __init__(self):
        super().__init__((CH[0], CH[1], 1, False), (CH[1], CH[2], 1, False), CH[2], 2)


class AudioConvWenet(_AudioConv):  # audio (B, 256, 16, 32)
    def __init__(self):
        super().__init__((CH[3], CH[3], 1, True), (CH[3], CH[3], 1, True), CH[3], (1, 2))


class Model(nn.Module):
    """The "328" U-Net generator: (B,6,320,320) image + audio features → (B,3,320,320) in [0,1]."""

    def __init__(self, n_channels=6, mode="ave"):
        super().__init__()
        self.audio_model = {"ave": AudioConvAve, "hubert": AudioConvHubert, "wenet": AudioConvWenet}[mode]()
        self.fuse_conv = nn.Sequential(DoubleConvDW(CH[4] * 2, CH[4], stride=1),
                                       DoubleConvDW(CH[4], CH[3], stride=1))
        self.inc = InConvDw(n_channels, CH[0])
        self.down1 = Down(CH[0], CH[0])
        self.down2 = Down(CH[0], CH[1])
        self.down3 = Down(CH[1], CH[2])
        self.down4 = Down(CH[2], CH[3])
        self.down5 = Down(CH[3], CH[4])
        self.up1 = Up(CH[4], CH[3] // 2)
        self.up2 = Up(CH[3], CH[2] // 2)
        self.up3 = Up(CH[2], CH[1] // 2)
        self.up4 = Up(CH[1], CH[0])
        self.up5 = Up(CH[1], CH[0] // 2)
        self.outc = OutConv(CH[0] // 2, 3)

    def forward(self, x, audio_feat):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x6 = self.down5(x5)
        x6 = self.fuse_conv(torch.cat([x6, self.audio_model(audio_feat)], dim=1))
        x = self.up1(x6, x5)
        x = self.up2(x, x4)
        x = self.up3(x, x3)
        x = self.up4(x, x2)
        x = self.up5(x, x1)
        return torch.sigmoid(self.outc(x))


class Conv2d(nn.Module):
    """Audio-encoder block: Conv2d(bias) → BatchNorm (+ input if residual) → ReLU."""

    def __init__(self, cin, cout, kernel_size, stride, padding, residual=False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding),
                                        nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x):
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class AudioEncoder(nn.Module):
    """mel (B,1,80,16) → emb (B,512). Its checkpoint holds the bare Sequential's keys (``0.conv_block…``)."""

    def __init__(self):
        super().__init__()
        self.audio_encoder = nn.Sequential(
            Conv2d(1, 32, 3, 1, 1),
            Conv2d(32, 32, 3, 1, 1, residual=True),
            Conv2d(32, 32, 3, 1, 1, residual=True),
            Conv2d(32, 64, 3, (3, 1), 1),
            Conv2d(64, 64, 3, 1, 1, residual=True),
            Conv2d(64, 64, 3, 1, 1, residual=True),
            Conv2d(64, 128, 3, 3, 1),
            Conv2d(128, 128, 3, 1, 1, residual=True),
            Conv2d(128, 128, 3, 1, 1, residual=True),
            Conv2d(128, 256, 3, (3, 2), 1),
            Conv2d(256, 256, 3, 1, 1, residual=True),
            Conv2d(256, 512, 3, 1, 0),
            Conv2d(512, 512, 1, 1, 0),
        )

    def forward(self, x):
        return self.audio_encoder(x).squeeze(3).squeeze(2)
