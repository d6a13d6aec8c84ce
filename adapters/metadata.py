"""What an adapter file says about itself, stored as JSON in the safetensors header."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .encoders.base import MAX_CONTEXT_LENGTH
from .errors import AdapterFileError, json_type, shown
from .json_text import parse_json
from .families import HEADS
from .module import AdapterShape

FORMAT_VERSION = 1
METADATA_KEY = "pea_adapter"


@dataclass
class EncoderSpec:
    """The language encoder an adapter was trained behind. ``None`` means unknown."""

    kind: str | None = None
    """Backend kind: chinese_clip, clip, altclip, t5, open_clip, ..."""
    name: str | None = None
    """Human-readable model id, e.g. ``OFA-Sys/chinese-clip-vit-huge-patch14``."""
    hidden_state: str = "last"
    context_length: int | None = None
    """Padded token length the adapter saw in training (SDXL pools over all of it)."""
    attention_mask: bool | None = None
    """Whether padding was masked out inside the encoder."""


@dataclass
class AdapterInfo:
    """Everything known about one adapter besides its weights."""

    shape: AdapterShape
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    languages: list[str] = field(default_factory=list)
    training: dict = field(default_factory=dict)
    """How it was trained: teacher checkpoint, steps, data, losses; free-form."""
    source: str = "pea"
    """``pea`` for our safetensors files, ``official`` for the authors' pickles."""

    @property
    def base_family(self) -> str:
        return self.shape.head

    def to_json(self) -> str:
        return json.dumps({
            "format_version": FORMAT_VERSION,
            "base_family": self.base_family,
            "shape": self.shape.to_dict(),
            "encoder": asdict(self.encoder),
            "languages": self.languages,
            "training": self.training,
        }, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> "AdapterInfo":
        """Parse the header JSON of ``where``; raise AdapterFileError naming the bad field."""
        d = parse_json(text, f"{where}: metadata '{METADATA_KEY}'", AdapterFileError)
        if not isinstance(d, dict):
            raise AdapterFileError(f"{where}: metadata '{METADATA_KEY}' is a JSON {json_type(d)}, "
                                   f"expected an object with 'format_version', 'shape' and 'encoder'")
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise AdapterFileError(
                f"{where}: format_version {shown(version)} is not supported (this pack reads up to "
                f"{FORMAT_VERSION}); update ComfyUI-PEA-Diffusion")
        shape = _shape(d.get("shape"), where)
        languages, training = d.get("languages", []), d.get("training", {})
        if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
            raise AdapterFileError(f"{where}: metadata field 'languages' is {shown(languages)}, expected an array of "
                                   f"strings")
        if not isinstance(training, dict):
            raise AdapterFileError(f"{where}: metadata field 'training' is a JSON {json_type(training)}, expected an object")
        return cls(shape=shape, encoder=_encoder_spec(d.get("encoder", {}), where), languages=languages,
                   training=training, source="pea")


MAX_WIDTH = 65536
"""The widest adapter layer accepted (FLUX's context is 4096 wide)."""
MAX_HIDDEN_LAYERS = 64


def _width(value: object, field: str, where: str) -> int:
    if type(value) is not int or not 0 < value <= MAX_WIDTH:
        raise AdapterFileError(f"{where}: metadata field '{field}' is {shown(value)}, expected a whole number "
                               f"from 1 to {MAX_WIDTH}")
    return value


def _shape(d: object, where: str) -> AdapterShape:
    """The adapter shape in the metadata field 'shape', every width and the depth bounded."""
    if not isinstance(d, dict):
        raise AdapterFileError(f"{where}: metadata field 'shape' is a JSON {json_type(d)}, expected an object")
    hidden = d.get("hidden_dims")
    if not isinstance(hidden, list) or len(hidden) > MAX_HIDDEN_LAYERS:
        found = f"an array of {len(hidden)}" if isinstance(hidden, list) else shown(hidden)
        raise AdapterFileError(f"{where}: metadata field 'shape.hidden_dims' is {found}, expected an array of at "
                               f"most {MAX_HIDDEN_LAYERS} widths")
    pooled = d.get("pooled_dim")
    try:
        return AdapterShape(
            head=d.get("head"), in_dim=_width(d.get("in_dim"), "shape.in_dim", where),
            hidden_dims=tuple(_width(h, f"shape.hidden_dims[{i}]", where) for i, h in enumerate(hidden)),
            out_dim=_width(d.get("out_dim"), "shape.out_dim", where),
            token_dim=_width(d.get("token_dim"), "shape.token_dim", where),
            pooled_dim=None if pooled is None else _width(pooled, "shape.pooled_dim", where))
    except ValueError as e:  # an unknown head
        raise AdapterFileError(f"{where}: metadata field 'shape.head' is {shown(d.get('head'))}, expected one of "
                               f"{', '.join(HEADS)}") from e


def _optional(kind: type):
    return lambda v: v is None or (isinstance(v, kind) and not (kind is int and isinstance(v, bool)))


_ENCODER_FIELDS = {
    "kind": ("a string or null", _optional(str)),
    "name": ("a string or null", _optional(str)),
    "hidden_state": ("a string", lambda v: isinstance(v, str)),
    "context_length": (f"a whole number from 1 to {MAX_CONTEXT_LENGTH} or null",
                       lambda v: _optional(int)(v) and (v is None or 0 < v <= MAX_CONTEXT_LENGTH)),
    "attention_mask": ("true, false or null", _optional(bool)),
}


def _encoder_spec(d: object, where: str) -> EncoderSpec:
    if not isinstance(d, dict):
        raise AdapterFileError(f"{where}: metadata field 'encoder' is a JSON {json_type(d)}, expected an object")
    for key, value in d.items():
        if key not in _ENCODER_FIELDS:
            raise AdapterFileError(f"{where}: metadata field 'encoder.{shown(key)[1:-1]}' is unknown (expected "
                                   f"{', '.join(_ENCODER_FIELDS)})")
        expected, valid = _ENCODER_FIELDS[key]
        if not valid(value):
            raise AdapterFileError(f"{where}: metadata field 'encoder.{key}' is {shown(value)}, expected {expected}")
    return EncoderSpec(**d)
