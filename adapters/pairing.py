"""Checks that an adapter fits its language encoder and the base model it will condition."""
from __future__ import annotations

from .encoders import LanguageEncoder
from .errors import IncompatibleError
from .families import FAMILIES, Family
from .metadata import AdapterInfo
from .module import AdapterShape


def describe_shape(shape: AdapterShape) -> str:
    pooled = f"a {shape.pooled_dim}-d pooled vector" if shape.pooled_dim else "no pooled vector"
    family = FAMILIES.get(shape.head)
    return f"{family.label if family else shape.head} ({shape.token_dim}-d tokens, {pooled})"


def check_pairing(encoder: LanguageEncoder, info: AdapterInfo, adapter_name: str) -> None:
    """Refuse an adapter whose input does not match the encoder's output, naming both sides."""
    trained = info.encoder
    trained_on = f"{trained.kind or 'unknown kind'} '{trained.name or 'unknown'}'"
    if encoder.hidden_size != info.shape.in_dim:
        raise IncompatibleError(
            f"Adapter '{adapter_name}' expects {info.shape.in_dim}-d token states (trained behind "
            f"{trained_on}), but language CLIP '{encoder.name}' gives {encoder.hidden_size}-d states "
            f"({encoder.kind}). Load the encoder this adapter was trained with.")
    if trained.kind and trained.kind != encoder.kind:
        raise IncompatibleError(
            f"Adapter '{adapter_name}' was trained behind a {trained.kind} encoder "
            f"('{trained.name or 'unknown'}'), but language CLIP '{encoder.name}' is a {encoder.kind} "
            f"encoder. Load the encoder this adapter was trained with.")
    if trained.context_length and trained.context_length != encoder.context_length:
        raise IncompatibleError(
            f"Adapter '{adapter_name}' was trained at context length {trained.context_length}, but "
            f"language CLIP '{encoder.name}' pads to {encoder.context_length}. Set context_length to "
            f"{trained.context_length} on the Load Language CLIP node.")
    if trained.attention_mask is not None and trained.attention_mask != encoder.use_attention_mask:
        raise IncompatibleError(
            f"Adapter '{adapter_name}' was trained with padding {_masking(trained.attention_mask)} inside "
            f"{trained_on}, but language CLIP '{encoder.name}' ({encoder.kind}) has its padding "
            f"{_masking(encoder.use_attention_mask)}: the conditioning would differ from training. Load the "
            f"encoder this adapter was trained with (byT5 is read unmasked, every other encoder masked); if "
            f"the adapter's metadata is wrong, rewrite it with 'python -m adapters.convert ADAPTER OUT "
            f"--{'' if encoder.use_attention_mask else 'no-'}attention-mask'.")


def _masking(masked: bool) -> str:
    return "masked" if masked else "attended (not masked)"


def check_base_model(shape: AdapterShape, adapter_name: str, model_name: str, family: Family) -> None:
    """Refuse an adapter whose head or widths are not the ones the base model's ``family``
    (``families.family_of(model)``) reads."""
    wants = f"{family.context_dim}-d context" + (f" and a {family.pooled_dim}-d pooled vector" if family.pooled_dim else "")
    fits = (shape.head == family.head and shape.token_dim == family.context_dim
            and shape.pooled_dim == family.pooled_dim)
    if not fits:
        raise IncompatibleError(
            f"Adapter '{adapter_name}' is made for {describe_shape(shape)}, but the model "
            f"'{model_name}' is {family.label} and needs {wants}. Pick an adapter made for this model's family.")
