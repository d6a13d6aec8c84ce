"""Storing an encoder's Linear weights in fp8 and computing in a wider dtype.

Large encoders (byT5-xxl: 9B parameters, 18 GB in bf16) fit beside the diffusion model when
their matrices are stored in 8 bits. Each ``nn.Linear`` keeps its weight in fp8 and casts it to
the input's dtype for its call, the way ComfyUI's ``manual_cast`` layers run fp8 text encoders;
embeddings and norms stay in the compute dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


class CastLinear(nn.Linear):
    """An ``nn.Linear`` whose stored weight (fp8) is cast to the input's dtype per call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def store_linear_weights(model: nn.Module, storage: torch.dtype, compute: torch.dtype) -> nn.Module:
    """Cast ``model`` to ``compute``, then every Linear weight to ``storage`` (in place).

    Layers a transformers model declares precision-sensitive (``_keep_in_fp32_modules``, e.g.
    T5's ``wo``, whose input T5 casts to that layer's weight dtype) stay in ``compute``. Move the
    result between devices with ``.to(device)`` only: a ``.to(dtype)`` would widen it again.
    """
    model.to(compute)
    keep = {name for m in model.modules() for name in getattr(m, "_keep_in_fp32_modules", None) or ()}
    for name, module in model.named_modules():
        if type(module) is nn.Linear and name.rsplit(".", 1)[-1] not in keep:
            module.__class__ = CastLinear
            module.weight.data = module.weight.data.to(storage)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by ``model``'s parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
