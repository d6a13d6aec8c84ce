"""Feature taps for feature KD: the output of the last block of every resolution level.

That is, in ComfyUI's ``openaimodel.UNetModel``, every input block ending in a Downsample plus
the last input block, the middle block, and every output block ending in an Upsample plus the
last output block (SD1.5: input 3, 6, 9, 11 / middle / output 2, 5, 8, 11; SDXL: input 3, 6, 8 /
middle / output 2, 5, 8). ComfyUI runs each block's layers one by one, so the hook sits on the
block's last layer, whose output is the block's output.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def tap_points(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) pairs whose outputs are the official feature-KD taps, found from the structure."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

    points = []
    inputs, outputs = list(unet.input_blocks), list(unet.output_blocks)
    for i, block in enumerate(inputs):
        if isinstance(block[-1], Downsample) or i == len(inputs) - 1:
            points.append((f"input_blocks.{i}", block[-1]))
    points.append(("middle_block", unet.middle_block[-1]))
    for j, block in enumerate(outputs):
        if isinstance(block[-1], Upsample) or j == len(outputs) - 1:
            points.append((f"output_blocks.{j}", block[-1]))
    return points


def expected_shapes(unet: nn.Module, height: int, width: int) -> list[tuple[int, int, int]]:
    """(channels, h, w) each tap must have for a latent of ``height`` x ``width``."""
    mults, ch = list(unet.channel_mult), unet.model_channels
    levels = len(mults)
    down = [(ch * m, height >> (k + 1), width >> (k + 1)) for k, m in enumerate(mults[:-1])]
    bottom = (ch * mults[-1], height >> (levels - 1), width >> (levels - 1))
    up = [(ch * mults[lvl], height >> (lvl - 1), width >> (lvl - 1)) for lvl in range(levels - 1, 0, -1)]
    return down + [bottom, bottom] + up + [(ch * mults[0], height, width)]


class FeatureTaps:
    """Captures the tap outputs and the UNet's raw output during one forward pass."""

    def __init__(self, unet: nn.Module):
        self.unet = unet
        self.points = tap_points(unet)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.points]

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict[str, torch.Tensor]]:
        """Within the block, a forward pass fills the yielded dict: tap name -> tensor, plus "output"."""
        features: dict[str, torch.Tensor] = {}

        def keep(name):
            return lambda _module, _inputs, output: features.__setitem__(name, output)

        handles = [module.register_forward_hook(keep(name)) for name, module in self.points]
        handles.append(self.unet.register_forward_hook(keep("output")))
        try:
            yield features
        finally:
            for handle in handles:
                handle.remove()

    def check(self, features: dict[str, torch.Tensor], height: int, width: int) -> None:
        """Raise if a tap's shape is not the one its resolution level implies."""
        for name, shape in zip(self.names, expected_shapes(self.unet, height, width)):
            got = tuple(features[name].shape[1:])
            if got != shape:
                raise RuntimeError(f"feature tap {name} has shape {got}, expected {shape}: "
                                   f"this UNet's layout is not the one the taps assume")
