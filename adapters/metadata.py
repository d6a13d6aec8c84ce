"""What an adapter file says about itself, stored as JSON in the safetensors header."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .encoders.base import MAX_CONTEXT_LENGTH
from .errors import AdapterFileError, json_type
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
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise AdapterFileError(f"{where}: metadata '{METADATA_KEY}' is not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise AdapterFileError(f"{where}: metadata '{METADATA_KEY}' is a JSON {json_type(d)}, "
                                   f"expected an object with 'format_version', 'shape' and 'encoder'")
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise AdapterFileError(
                f"{where}: format_version {version!r} is not supported (this pack reads up to "
                f"{FORMAT_VERSION}); update ComfyUI-PEA-Diffusion")
        try:
            shape = AdapterShape.from_dict(d["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise AdapterFileError(f"{where}: metadata field 'shape' is malformed ({e!r})") from e
        languages, training = d.get("languages", []), d.get("training", {})
        if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
            raise AdapterFileError(f"{where}: metadata field 'languages' is {languages!r}, expected an array of strings")
        if not isinstance(training, dict):
            raise AdapterFileError(f"{where}: metadata field 'training' is a JSON {json_type(training)}, expected an object")
        return cls(shape=shape, encoder=_encoder_spec(d.get("encoder", {}), where), languages=languages,
                   training=training, source="pea")


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
            raise AdapterFileError(f"{where}: metadata field 'encoder.{key}' is unknown (expected "
                                   f"{', '.join(_ENCODER_FIELDS)})")
        expected, valid = _ENCODER_FIELDS[key]
        if not valid(value):
            raise AdapterFileError(f"{where}: metadata field 'encoder.{key}' is {value!r}, expected {expected}")
    return EncoderSpec(**d)
