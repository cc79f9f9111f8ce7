"""A torch fast-style transformation network in pytorch/examples' layout (`TransformerNet`'s state-dict
names), for the conversion tests and `benchmarks/faststyle_bench.py` (needs torch).

Written here from the layout description (SYNTHESIS.md section 8.1), not pytorch/examples' code:
reflection padding k//2 before every conv, affine instance norm (eps 1e-5, no running statistics), five
residual blocks without a ReLU after the sum, nearest x2 upsampling + conv, final 9x9 conv with no
activation, 0-255 in and out. Module-level classes, so that a whole module pickles (a test saves one).
"""

import torch
from torch import nn


class PadConv(nn.Module):
    def __init__(self, cin, cout, k, stride=1, upsample=False):
        super().__init__()
        self.upsample = upsample
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv2d = nn.Conv2d(cin, cout, k, stride)

    def forward(self, x):
        if self.upsample:
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv2d(self.pad(x))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.in1 = PadConv(c, c, 3), nn.InstanceNorm2d(c, affine=True)
        self.conv2, self.in2 = PadConv(c, c, 3), nn.InstanceNorm2d(c, affine=True)

    def forward(self, x):
        return x + self.in2(self.conv2(torch.relu(self.in1(self.conv1(x)))))


class TorchTransformer(nn.Module):
    """float32, torch's default initialisation."""

    def __init__(self):
        super().__init__()
        norm = lambda c: nn.InstanceNorm2d(c, affine=True)  # noqa: E731
        self.conv1, self.in1 = PadConv(3, 32, 9), norm(32)
        self.conv2, self.in2 = PadConv(32, 64, 3, 2), norm(64)
        self.conv3, self.in3 = PadConv(64, 128, 3, 2), norm(128)
        for i in range(1, 6):
            setattr(self, f"res{i}", Block(128))
        self.deconv1, self.in4 = PadConv(128, 64, 3, upsample=True), norm(64)
        self.deconv2, self.in5 = PadConv(64, 32, 3, upsample=True), norm(32)
        self.deconv3 = PadConv(32, 3, 9)

    def forward(self, x):
        y = torch.relu(self.in1(self.conv1(x)))
        y = torch.relu(self.in2(self.conv2(y)))
        y = torch.relu(self.in3(self.conv3(y)))
        for i in range(1, 6):
            y = getattr(self, f"res{i}")(y)
        y = torch.relu(self.in4(self.deconv1(y)))
        y = torch.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)
