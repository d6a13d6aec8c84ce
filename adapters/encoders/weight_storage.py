"""Which of an encoder's weights may be stored narrower than it computes (fp8 storage).

Large encoders (byT5-xxl: 9B parameters, 18 GB in bf16) fit beside the diffusion model when
their matrices are stored in 8 bits and widened per layer when run. The widening is ComfyUI's
(``comfy.ops`` casting, applied by the nodes); this module only says which layers qualify.
"""
from __future__ import annotations

import torch
from torch import nn

FP8_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def narrow_storable(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The Linear layers whose weights may be stored in fp8: every one but those a transformers
    model declares precision-sensitive (``_keep_in_fp32_modules``, e.g. T5's ``wo``, whose input
    T5 casts to that layer's weight dtype). Embeddings and norms are never narrowed."""
    keep = {name for m in model.modules() for name in getattr(m, "_keep_in_fp32_modules", None) or ()}
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] not in keep]


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by ``model``'s parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
