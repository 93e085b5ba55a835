"""Building blocks shared by the U-shaped models (LViT, U-Net, ...).

The CNN is the one of LViT's official code: an input conv-BN-ReLU at full resolution, four
max-pool + 2x(conv3x3-BN-ReLU) down blocks (widths W, 2W, 4W, 8W, 8W) and four decoder blocks
(x2 upsampling, optional PLAM on the skip, concatenation, 2x conv-BN-ReLU), then a 1x1 head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBNReLU(nn.Sequential):
    """Conv2d (with bias, as in the reference code) -> BatchNorm2d -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


def double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU layers: ``in_ch -> out_ch -> out_ch``."""
    return nn.Sequential(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


class DownBlock(nn.Module):
    """2x2 max-pool, then two conv-BN-ReLU layers."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.convs = double_conv(in_ch, out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(F.max_pool2d(x, 2))


class PLAM(nn.Module):
    """Pixel-level attention module (LViT's ``PixLevelModule``, only the parts that run).

    Two bias-free 1x1 conv + ReLU branches (computed as one conv with ``2C`` outputs), reduced
    by the mean and by the max over channels; the stack ``[mean, max, mean + max]`` goes through
    a per-pixel MLP 3 -> 6 -> 1 (``fc1``, ReLU, ``fc2``) and the result multiplies the input. No
    sigmoid (as in the official code, which defines one and never calls it).
    """

    def __init__(self, channels: int, hidden: int = 6) -> None:
        super().__init__()
        # Output channels [:C] are the "mean" branch, [C:] the "max" branch.
        self.branches = nn.Conv2d(channels, 2 * channels, 1, bias=False)
        self.fc1 = nn.Linear(3, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        # chunk (not slicing): its backward concatenates instead of zero-filling 2C maps twice.
        a, m = F.relu(self.branches(x), inplace=True).chunk(2, dim=1)
        avg = a.mean(dim=1, keepdim=True)
        mx = m.amax(dim=1, keepdim=True)
        stack = torch.cat([avg, mx, avg + mx], dim=1).view(b, 3, h * w)
        # The per-pixel MLP as batched matmuls over [B, 3, HW]: far faster on the CPU than
        # 1x1 convs with 3 and 6 channels or a Linear over a [B, H, W, 3] view.
        hid = torch.baddbmm(self.fc1.bias.view(1, -1, 1), self.fc1.weight.expand(b, -1, -1), stack)
        hid = F.relu(hid, inplace=True)
        att = torch.baddbmm(self.fc2.bias.view(1, -1, 1), self.fc2.weight.expand(b, -1, -1), hid)
        return x * att.view(b, 1, h, w)


class UpBlock(nn.Module):
    """Decoder step: x2 upsampling of ``x``, skip (through PLAM if ``attention``), concat, 2 convs.

    ``in_ch`` is the channel count after concatenation (skip + upsampled, equal halves).
    ``up_mode`` is ``"nearest"`` (LViT) or ``"transpose"`` (a 2x2 stride-2 transposed conv, as in
    the reference U-Net baseline).
    """

    def __init__(
        self, in_ch: int, out_ch: int, attention: bool = True, up_mode: str = "nearest"
    ) -> None:
        super().__init__()
        if up_mode not in ("nearest", "transpose"):
            raise ValueError(f"up_mode must be 'nearest' or 'transpose', got {up_mode!r}")
        half = in_ch // 2
        self.up = nn.ConvTranspose2d(half, half, 2, stride=2) if up_mode == "transpose" else None
        self.plam = PLAM(half) if attention else None
        self.convs = double_conv(in_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x) if self.up is not None else F.interpolate(x, scale_factor=2.0)
        if self.plam is not None:
            skip = self.plam(skip)
        return self.convs(cat_channels_last([skip, x]))


def cat_channels_last(maps: list[Tensor]) -> Tensor:
    """Concatenate ``[B, C_i, H, W]`` maps along channels into a channels-last result.

    ``torch.cat`` picks its output layout from a heuristic that, for batch size 1, turns
    channels-last inputs into a channels-first output (slow copy, and every later layer then runs
    channels-first). Concatenating ``[B, H, W, C]`` views along the last axis avoids that.
    """
    return torch.cat([m.permute(0, 2, 3, 1) for m in maps], dim=3).permute(0, 3, 1, 2)


class UNetEncoder(nn.Module):
    """Input conv (``in_chans -> W`` at full resolution) and four down blocks.

    Returns the five feature maps (channels-last) ``[x1 (W, S), x2 (2W, S/2), x3 (4W, S/4),
    x4 (8W, S/8), x5 (8W, S/16)]``.
    """

    def __init__(self, in_chans: int, width: int) -> None:
        super().__init__()
        w = width
        self.inc = ConvBNReLU(in_chans, w)
        self.down1 = DownBlock(w, 2 * w)
        self.down2 = DownBlock(2 * w, 4 * w)
        self.down3 = DownBlock(4 * w, 8 * w)
        self.down4 = DownBlock(8 * w, 8 * w)

    def forward(self, x: Tensor) -> list[Tensor]:
        # Channels-last activations: on the CPU (oneDNN) convolutions, 1x1 convolutions and
        # max-pooling are much faster in this layout, on CUDA it suits tensor cores. The
        # parameters keep the default layout (checkpoints stay plain contiguous tensors).
        x = x.contiguous(memory_format=torch.channels_last)
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        return [x1, x2, x3, x4, x5]


class UNetDecoder(nn.Module):
    """Four up blocks (``16W -> 4W, 8W -> 2W, 4W -> W, 2W -> W``) and a 1x1 head ``W -> 1``."""

    def __init__(
        self, width: int, attention: bool = True, up_mode: str = "nearest", out_chans: int = 1
    ) -> None:
        super().__init__()
        w = width
        self.up4 = UpBlock(16 * w, 4 * w, attention, up_mode)
        self.up3 = UpBlock(8 * w, 2 * w, attention, up_mode)
        self.up2 = UpBlock(4 * w, w, attention, up_mode)
        self.up1 = UpBlock(2 * w, w, attention, up_mode)
        self.head = nn.Conv2d(w, out_chans, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.head(self.forward_features(feats))

    def forward_features(self, feats: list[Tensor]) -> Tensor:
        """The last feature map before the head, ``[B, W, S, S]``."""
        x1, x2, x3, x4, x5 = feats
        x = self.up4(x5, x4)
        x = self.up3(x, x3)
        x = self.up2(x, x2)
        return self.up1(x, x1)


def check_image(image: Tensor, in_chans: int, img_size: int) -> None:
    """Raise a ValueError naming the expected shape unless ``image`` is ``[B, C, S, S]``."""
    if (
        image.ndim != 4
        or image.shape[1] != in_chans
        or image.shape[2] != img_size
        or image.shape[3] != img_size
    ):
        raise ValueError(
            f"expected an image batch of shape [B, {in_chans}, {img_size}, {img_size}] "
            f"(img_size={img_size}), got {list(image.shape)}; resize the image to "
            f"{img_size}x{img_size} or build the model with img_size={image.shape[-1]}"
        )
