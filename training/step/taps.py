"""Feature taps for feature KD: the output of the last block of every resolution level.

That is, in ComfyUI's ``openaimodel.UNetModel``, every input block ending in a Downsample plus
the last input block, the middle block, and every output block ending in an Upsample plus the
last output block (SD1.5: input 3, 6, 9, 11 / middle / output 2, 5, 8, 11; SDXL: input 3, 6, 8 /
middle / output 2, 5, 8). ``training.step.unet_pass.tapped_forward`` returns them with the output.
"""
from __future__ import annotations

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


def tap_names(unet: nn.Module) -> list[str]:
    """Names of the official feature-KD taps, in forward order."""
    return [name for name, _ in tap_points(unet)]


def check_features(unet: nn.Module, features: dict[str, torch.Tensor], height: int, width: int) -> None:
    """Raise if a tap's shape is not the one its resolution level implies."""
    for name, shape in zip(tap_names(unet), expected_shapes(unet, height, width)):
        got = tuple(features[name].shape[1:])
        if got != shape:
            raise RuntimeError(f"feature tap {name} has shape {got}, expected {shape}: "
                               f"this UNet's layout is not the one the taps assume")
