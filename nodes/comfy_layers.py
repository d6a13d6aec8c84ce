"""An encoder's layers on ComfyUI's weight casting (``comfy.ops``).

transformers and open_clip build plain ``nn.Linear``/``nn.Embedding``/``nn.LayerNorm`` layers.
After loading, each becomes ComfyUI's own class for it (the class is swapped; the tensors stay),
so ComfyUI's model management treats the encoder as it treats its own text encoders: a partial
load (lowvram, ``--lowvram``/``--novram``) leaves layers on the offload device and streams them
per call, weight patches apply per layer, and fp8-stored weights are widened per call
(``manual_cast``). T5's RMS norm, a transformers module of its own, takes its weight to the
input's device as ComfyUI's own T5 norm does.
"""
from __future__ import annotations

import torch
from torch import nn

import comfy.model_management
import comfy.ops
from comfy.patcher_extension import CallbacksMP

from ..adapters.encoders.weight_storage import narrow_storable

COMFY_OPS = {nn.Linear: "Linear", nn.Embedding: "Embedding", nn.LayerNorm: "LayerNorm"}
"""Plain layer class -> the name of ComfyUI's class for it in ``comfy.ops.disable_weight_init``
(weights used as stored while loaded on the device, cast when ComfyUI streams them) and
``comfy.ops.manual_cast`` (always cast: for weights stored narrower than they compute)."""
T5_NORMS = ("T5LayerNorm", "MT5LayerNorm", "UMT5LayerNorm")


class T5LayerNorm(nn.Module):
    """transformers' T5 RMS norm (statistics in fp32, the result in the weight's dtype when that is
    half precision), with its weight taken to the input's device per call."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = comfy.model_management.cast_to(self.weight, device=hidden_states.device)
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(weight.dtype)
        return weight * hidden_states


def use_comfy_ops(model: nn.Module, storage: torch.dtype | None = None) -> nn.Module:
    """Swap ``model``'s layers to ComfyUI's casting classes, in place.

    With ``storage`` (an fp8 dtype) the Linear weights that may be narrowed
    (:func:`~adapters.encoders.weight_storage.narrow_storable`) are stored in it and widened to
    the input's dtype per call; embeddings, norms and T5's ``wo`` keep their dtype.
    """
    narrow = {id(m) for _, m in narrow_storable(model)} if storage is not None else set()
    for module in model.modules():
        op = COMFY_OPS.get(type(module))
        if op is not None:
            family = comfy.ops.manual_cast if id(module) in narrow else comfy.ops.disable_weight_init
            module.__class__ = getattr(family, op)
            # Lists of this layer's own: ComfyUI appends lowvram patches to them (the class-level
            # defaults are shared by every layer); the constructor ComfyUI's Embedding skips sets bias.
            module.weight_function, module.bias_function = [], []
            if op == "Embedding":
                module.bias = None
            if id(module) in narrow:
                module.weight = nn.Parameter(module.weight.detach().to(storage), requires_grad=False)
        elif type(module).__name__ in T5_NORMS:
            module.__class__ = T5LayerNorm
    return model


def _buffers_to(patcher, device_to, *_args) -> None:
    if device_to is None:
        return
    for module in patcher.model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            setattr(module, name, buffer.to(device_to))


def move_buffers_on_load(patcher) -> None:
    """Have ``patcher`` take its model's buffers to the device it loads to. transformers keeps
    position and token-type ids in buffers of modules that also hold layers; a partial load moves
    layers one by one and would leave those ids behind. (Unloading moves the whole model back.)"""
    patcher.add_callback(CallbacksMP.ON_LOAD, _buffers_to)
