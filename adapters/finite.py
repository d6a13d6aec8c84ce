"""Refusing NaN and infinite numbers: in weight files as they are loaded, and in the conditioning.

A single NaN weight makes every conditioning value NaN, the sampler's latent NaN and the saved
image black, with ``success`` reported. Weights are checked in the dtype they will run in: a value
that is finite in the file but beyond that dtype's range (1e30 in an fp32 file run in fp16)
becomes infinite when cast, so it is refused too.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from .encoders.tokenizer_guard import tokenizer_panics
from .errors import NonFiniteError, PEAError

BROKEN_FILE = ("The file is damaged, was saved from a training run that diverged, or holds values too large "
               "for the dtype it runs in; it is refused because it would turn every prompt into NaN "
               "conditioning (black images).")
PROMPT_SHOWN = 80
"""Characters of a prompt quoted in an error."""


def _value_problem(tensor: torch.Tensor, dtype: torch.dtype | None) -> str | None:
    """What is wrong with ``tensor``'s values, or None. One reduction pass, no copy of the tensor
    (8-bit floats, which torch cannot reduce, are widened one tensor at a time)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return None
    if tensor.element_size() == 1:
        tensor = tensor.to(torch.float16)
    low, high = (v.item() for v in torch.aminmax(tensor))  # NaN propagates through both
    if math.isnan(low) or math.isnan(high):
        return "holds NaN values"
    if math.isinf(low) or math.isinf(high):
        return "holds infinite values"
    if dtype is not None and max(-low, high) > torch.finfo(dtype).max:
        return (f"holds values up to {max(-low, high):.3g}, beyond the range of {dtype} (±{torch.finfo(dtype).max:.5g}) "
                f"it runs in: they would become infinite")
    return None


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], where: str, error: type[PEAError],
                 dtype: torch.dtype | None = None) -> None:
    """Raise ``error`` naming ``where`` and the first floating tensor holding NaN or ±inf, or (with
    ``dtype``) values beyond ``dtype``'s range."""
    for name, tensor in tensors:
        problem = _value_problem(tensor.detach(), dtype)
        if problem:
            raise error(f"{where}: tensor '{name}' {problem}. {BROKEN_FILE}")


def _rows_not_finite(*tensors: torch.Tensor | None) -> torch.Tensor:
    """Per batch row: True where any of ``tensors`` holds NaN or ±inf."""
    bad = None
    for t in tensors:
        if t is not None:
            rows = ~torch.isfinite(t).flatten(1).all(dim=1)
            bad = rows if bad is None else bad | rows
    return bad


def check_conditioning(encoder, adapter_name: str, input_ids: torch.Tensor, hidden: torch.Tensor,
                       tokens: torch.Tensor, pooled: torch.Tensor | None) -> None:
    """Refuse PEA conditioning holding NaN or ±inf, naming the prompt and which part produced it.

    ``encoder`` is the LanguageEncoder that turned ``input_ids`` into ``hidden``; the adapter
    ``adapter_name`` turned those into ``tokens`` and ``pooled``.
    """
    bad = _rows_not_finite(tokens, pooled)
    if not bad.any():
        return
    row = int(bad.nonzero()[0])
    with tokenizer_panics(encoder.path):
        prompt = encoder.tokenizer.decode(input_ids[row].tolist(), skip_special_tokens=True)
    if len(prompt) > PROMPT_SHOWN:
        prompt = prompt[:PROMPT_SHOWN] + "…"
    if _rows_not_finite(hidden[row:row + 1]).any():
        culprit = f"the language CLIP '{encoder.name}' produced non-finite token states"
    else:
        culprit = (f"the adapter '{adapter_name}' produced non-finite values from the finite token states of "
                   f"the language CLIP '{encoder.name}'")
    raise NonFiniteError(
        f"PEA conditioning for prompt '{prompt}' contains NaN/inf: {culprit}, computing in {hidden.dtype}. "
        f"In fp16 a large encoder or adapter can overflow: load the language CLIP with dtype bf16 or fp32. "
        f"Otherwise a weight file is broken: check the pair with 'python -m adapters.check'.")
