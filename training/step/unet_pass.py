"""The UNet passes of a distillation step, without forward hooks.

``tapped_forward`` is ComfyUI's ``UNetModel._forward`` (identical in 0.3.41, 0.3.64 and 0.10.0)
run block by block with ComfyUI's own ``timestep_embedding`` and ``forward_timestep_embed``; it
returns the model output together with the feature-KD taps, so a pass is one plain function that
``torch.compile`` turns into one graph. What ``_forward`` does beyond that is not part of a
training pass: ControlNet residuals (``control``), transformer patches and diffusion-model
wrappers (a ModelPatcher's ``model_options``, which training never sets: the teacher is the
plain checkpoint), and the video arguments of SVD-style UNets. Every pass gets fresh transformer
options, so nothing a call writes into them is seen by the next one.

Selected attention blocks of the student pass can be recomputed in backward instead of keeping
their activations (``recompute_plan``): inside such a block the cheap operations (normalisations,
activations, and the projections no wider than the block, GEGLU's input projection and q/k/v
among them) are recomputed, while attention, convolutions and the wide GEGLU output projection
keep their outputs.
"""
from __future__ import annotations

import argparse
import functools
import math
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

Features = dict[str, torch.Tensor]


def unet_inputs(base_model, noisy: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x, timesteps, context, y) as ``BaseModel._apply_model`` hands them to the diffusion model:
    scaled input in the model's compute dtype (its weight dtype, or its manual-cast dtype)."""
    ms = base_model.model_sampling
    dtype = base_model.manual_cast_dtype or base_model.get_dtype()
    x = ms.calculate_input(sigma, noisy).to(dtype)
    timesteps = base_model.process_timestep(ms.timestep(sigma).float(), x=noisy)
    return x, timesteps, context.to(x.device, dtype), None if y is None else y.to(x.device, dtype)


def transformer_width(block: nn.Module) -> int:
    """Channels of the block's transformer (0 for a block without attention)."""
    from comfy.ldm.modules.attention import SpatialTransformer

    return max((layer.in_channels for layer in block if isinstance(layer, SpatialTransformer)), default=0)


def named_blocks(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every block of the UNet in forward order, with its name in the state dict."""
    return ([(f"input_blocks.{i}", b) for i, b in enumerate(unet.input_blocks)] + [("middle_block", unet.middle_block)]
            + [(f"output_blocks.{j}", b) for j, b in enumerate(unet.output_blocks)])


def checked_budget(value: float | str) -> float:
    """``value`` as a memory budget (the share of attention blocks that keep their activations)
    when it lies in [0, 1]; ValueError otherwise. The one place the range is written."""
    budget = float(value)
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"memory budget must lie in [0, 1], got {value}")
    return budget


def budget_option(text: str) -> float:
    """``--memory-budget`` for argparse, which then names the option in its message."""
    try:
        return checked_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def recompute_plan(unet: nn.Module, memory_budget: float) -> frozenset[str]:
    """Blocks of the student pass to recompute in backward so that ``memory_budget`` (0..1) of the
    attention blocks keep their activations; 1 recomputes nothing, 0 every attention block.

    The narrowest go first: their projections cost the fewest FLOPs per byte they free (SDXL:
    the 640-wide level, then the 1280-wide one). Blocks without attention are never recomputed:
    their convolutions are the expensive part, and the rest frees little."""
    memory_budget = checked_budget(memory_budget)
    blocks = [(transformer_width(block), k, name) for k, (name, block) in enumerate(named_blocks(unet))]
    candidates = sorted(b for b in blocks if b[0])
    count = math.ceil((1.0 - memory_budget) * len(candidates) - 1e-9)
    return frozenset(name for _, _, name in candidates[:count])


_aten = torch.ops.aten
_CHEAP = {_aten._unsafe_view.default, _aten._to_copy.default, _aten.native_group_norm.default,
          _aten.native_layer_norm.default, _aten.upsample_nearest2d.default}
_MATMULS = {_aten.mm.default: 0, _aten.addmm.default: 1}  # operator -> position of the [M, K] input


def _is_view(op) -> bool:
    return any(r.alias_info is not None and not r.alias_info.is_write for r in op._schema.returns)


def _recompute_policy(ctx, op, *args, width: int, **kwargs) -> CheckpointPolicy:
    """Recompute elementwise operations, views, normalisations, dtype casts and projections whose
    input is no wider than ``width``; keep every other output (attention, whichever kernel runs
    it, convolutions, wider projections)."""
    if op in _MATMULS:
        cheap = args[_MATMULS[op]].shape[-1] <= width
    else:
        cheap = op in _CHEAP or torch.Tag.pointwise in op.tags or _is_view(op)
    return CheckpointPolicy.PREFER_RECOMPUTE if cheap else CheckpointPolicy.MUST_SAVE


def _run_block(block: nn.Module, where: tuple[str, int], original_shape: list[int], h: torch.Tensor,
               emb: torch.Tensor, context: torch.Tensor, output_shape) -> torch.Tensor:
    from comfy.ldm.modules.diffusionmodules.openaimodel import forward_timestep_embed

    options = {"original_shape": original_shape, "transformer_index": 0, "block": where}
    return forward_timestep_embed(block, h, emb, context, options, output_shape)


def tapped_forward(unet: nn.Module, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                   y: torch.Tensor | None, taps: frozenset[str],
                   recompute: frozenset[str] = frozenset()) -> tuple[torch.Tensor, Features]:
    """``unet(x, timesteps, context, y)`` and the outputs of the blocks named in ``taps``."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import timestep_embedding

    original_shape = list(x.shape)
    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels, repeat_only=False).to(x.dtype))
    if unet.num_classes is not None:
        emb = emb + unet.label_emb(y)

    features: Features = {}

    def run(name, block, where, h, output_shape=None):
        if name in recompute:
            policy = functools.partial(_recompute_policy, width=transformer_width(block))
            h = checkpoint(_run_block, block, where, original_shape, h, emb, context, output_shape,
                           use_reentrant=False, preserve_rng_state=False, determinism_check="none",
                           context_fn=functools.partial(create_selective_checkpoint_contexts, policy))
        else:
            h = _run_block(block, where, original_shape, h, emb, context, output_shape)
        if name in taps:
            features[name] = h
        return h

    hs, h = [], x
    for i, block in enumerate(unet.input_blocks):
        h = run(f"input_blocks.{i}", block, ("input", i), h)
        hs.append(h)
    h = run("middle_block", unet.middle_block, ("middle", 0), h)
    for j, block in enumerate(unet.output_blocks):
        h = torch.cat([h, hs.pop()], dim=1)
        h = run(f"output_blocks.{j}", block, ("output", j), h, hs[-1].shape if hs else None)
    return unet.out(h.type(x.dtype)), features


def _teacher_pass(unet, x, timesteps, context, y, taps):
    with torch.no_grad():
        return tapped_forward(unet, x, timesteps, context, y, taps)


def _student_pass(unet, x, timesteps, context, y, taps, recompute):
    return tapped_forward(unet, x, timesteps, context, y, taps, recompute)


class UNetPasses:
    """The teacher (no grad) and student passes of one UNet, eager or compiled with ``backend``.

    Compiled, each pass is one graph (``fullgraph=True``) with dynamic shapes, so the aspect
    buckets and a short last batch reuse it; Inductor keeps its compiled kernels in its on-disk
    cache (``TORCHINDUCTOR_CACHE_DIR``), so a second run starts faster.
    """

    def __init__(self, unet: nn.Module, taps: list[str], recompute: frozenset[str] = frozenset(),
                 backend: str | None = None):
        self.unet, self.taps, self.recompute = unet, frozenset(taps), recompute
        make: Callable = (functools.partial(torch.compile, fullgraph=True, dynamic=True, backend=backend)
                          if backend else (lambda f: f))
        self._teacher, self._student = make(_teacher_pass), make(_student_pass)

    def teacher(self, x, timesteps, context, y) -> tuple[torch.Tensor, Features]:
        with _distinct_sizes():
            return self._teacher(self.unet, x, timesteps, context, y, self.taps)

    def student(self, x, timesteps, context, y) -> tuple[torch.Tensor, Features]:
        with _distinct_sizes():
            return self._student(self.unet, x, timesteps, context, y, self.taps, self.recompute)

    def both(self, base_model, noisy: torch.Tensor, sigma: torch.Tensor, *,
             teacher: tuple[torch.Tensor, torch.Tensor | None],
             student: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[Features, Features]:
        """The student's and the teacher's tapped features, with their predictions as ``"output"``,
        on the same noisy latents, in ``distillation_loss``'s order; each side's conditioning is
        its (tokens, label ``y``), named so that the two cannot be swapped."""
        output, teacher_features = self.teacher(*unet_inputs(base_model, noisy, sigma, *teacher))
        student_output, student_features = self.student(*unet_inputs(base_model, noisy, sigma, *student))
        return {**student_features, "output": student_output}, {**teacher_features, "output": output}


def _distinct_sizes():
    """Give every dynamic size its own symbol: with duck shaping a square first bucket would
    tie height to width, and the first non-square bucket would compile the pass again."""
    return torch.fx.experimental._config.patch(use_duck_shape=False)
