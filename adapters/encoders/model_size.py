"""Refusing a model config that describes more than the pack ever loads, before it is built.

A ``config.json`` saying ``num_hidden_layers: 100000`` made transformers build for minutes at
4 GB before anything was said. Each size field is checked to be a whole number within a bound,
and the parameters the sizes add up to against a budget above the largest real encoder the pack
loads (umT5-XXL's encoder, about 5.7 billion).
"""
from __future__ import annotations

from typing import Mapping

from ..errors import EncoderLoadError, shown

MAX_PARAMETERS = 12 * 10**9
SIZE_FIELDS = {
    # what the size is -> (the config keys that give it, the largest accepted value)
    "layers": (("num_hidden_layers", "num_layers", "layers"), 256),
    "width": (("hidden_size", "d_model", "width"), 32768),
    "feed_forward": (("intermediate_size", "d_ff"), 131072),
    "vocabulary": (("vocab_size",), 2**22),
    "positions": (("max_position_embeddings",), 2**16),
}


def _size(config: Mapping, keys: tuple[str, ...], limit: int, where: str) -> int:
    key = next((k for k in keys if config.get(k) is not None), None)
    if key is None:
        return 0
    value = config[key]
    if isinstance(value, list) and value and all(type(v) is int and v >= 0 for v in value):
        value = sum(value)  # open_clip's ResNet towers give layers per stage
    if type(value) is not int or not 0 <= value <= limit:
        raise EncoderLoadError(f"{where}: {key} is {shown(value)}, expected a whole number up to {limit}")
    return value


def check_model_size(config: Mapping, where: str) -> None:
    """Refuse, naming ``where`` (the config file) and the field, a transformer config (a
    transformers config as a dict, or open_clip's ``vision_cfg``) whose sizes are not whole
    numbers within bounds or add up to more than :data:`MAX_PARAMETERS` parameters."""
    sizes = {name: _size(config, keys, limit, where) for name, (keys, limit) in SIZE_FIELDS.items()}
    width = sizes["width"]
    feed_forward = sizes["feed_forward"] or 4 * width
    parameters = sizes["layers"] * (4 * width * width + 2 * width * feed_forward)
    parameters += (sizes["vocabulary"] + sizes["positions"]) * width
    if parameters > MAX_PARAMETERS:
        raise EncoderLoadError(
            f"{where} describes a model of about {parameters / 1e9:.0f} billion parameters ({sizes['layers']} layers "
            f"of width {width}), more than the {MAX_PARAMETERS // 10**9} billion the pack loads: the config is "
            f"damaged or not the model's")
