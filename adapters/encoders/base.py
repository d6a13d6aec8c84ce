"""The language-encoder interface every backend implements."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import EncoderLoadError, PEAError, shown
from .tokenizer_guard import tokenizer_panics

MAX_CONTEXT_LENGTH = 1024
"""The longest padded length the pack accepts (the Load Language CLIP node's maximum). A length read
from a file is checked against it before anything is allocated: 10^8 padded tokens took 71 s and
11.8 GB before failing."""
ROBERTA_POSITIONS = ("xlm-roberta", "roberta", "altclip_text_model")
"""Model types whose position ids start after the padding id (XLM-R's 514 positions hold 512 tokens)."""


def check_context_length(value: object, where: str, error: type[PEAError] = EncoderLoadError,
                         positions: int | None = None) -> int:
    """``value`` if it is a whole number from 1 to :data:`MAX_CONTEXT_LENGTH` and at most ``positions``
    (the encoder's position count, where it has one); otherwise ``error`` naming ``where`` (the
    file and field)."""
    if type(value) is not int or not 0 < value <= MAX_CONTEXT_LENGTH:
        raise error(f"{where} is {shown(value)}, expected a whole number from 1 to {MAX_CONTEXT_LENGTH}")
    if positions is not None and value > positions:
        raise error(f"{where} is {value}, but the encoder has only {positions} positions: expected at most "
                    f"{positions}")
    return value


def position_count(config) -> int | None:
    """How many tokens a transformers text config's position embeddings hold, or None where it has
    none (T5's relative positions)."""
    positions = getattr(config, "max_position_embeddings", None)
    if type(positions) is not int:
        return None
    if getattr(config, "model_type", None) in ROBERTA_POSITIONS:
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    return positions


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids framing a prompt; ``start``/``end`` are None where the tokenizer adds none."""

    start: int | None
    end: int | None
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialTokens":
        empty = tokenizer("")["input_ids"]
        start = empty[0] if len(empty) >= 2 else None
        end = empty[-1] if empty else None
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = end if end is not None else 0
        return cls(start, end, pad)

    def as_dict(self) -> dict[str, int]:
        """The ``special_tokens`` mapping ComfyUI's text encoders use."""
        d = {"pad": self.pad}
        if self.start is not None:
            d["start"] = self.start
        if self.end is not None:
            d["end"] = self.end
        return d


def padding_mask(input_ids: torch.Tensor, special: SpecialTokens) -> torch.Tensor:
    """1 for real tokens (up to and including the first end token), 0 for padding."""
    if special.end is None:
        return (input_ids != special.pad).long()
    is_end = (input_ids == special.end).long()
    after_end = (is_end.cumsum(dim=1) - is_end) > 0
    return (~after_end).long()


class LanguageEncoder(nn.Module):
    """A frozen text tower giving last-layer token states ``[B, L, hidden_size]``.

    Subclasses set ``self.model`` and implement :meth:`hidden_states`.
    """

    kind: str = ""

    def __init__(self, tokenizer, *, name: str, path: Path, hidden_size: int,
                 context_length: int, attention_mask: bool = True):
        super().__init__()
        self.tokenizer = tokenizer
        self.name = name
        self.path = Path(path)
        self.hidden_size = hidden_size
        self.context_length = context_length
        self.use_attention_mask = attention_mask
        with tokenizer_panics(self.path):
            self.special_tokens = SpecialTokens.from_tokenizer(tokenizer)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, input_ids: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """Token ids ``[B, L]`` -> last-layer states ``[B, L', hidden_size]`` in the encoder's dtype,
        computed on ``device`` (default: where its first parameter is; a host that streams layers
        from another device passes the one it computes on)."""
        input_ids = input_ids.to(device or self.device)
        mask = padding_mask(input_ids, self.special_tokens) if self.use_attention_mask else None
        return self.hidden_states(input_ids, mask)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Ids padded and truncated to ``context_length``, as in training."""
        with tokenizer_panics(self.path):
            out = self.tokenizer(list(texts), padding="max_length", truncation=True,
                                 max_length=self.context_length, return_tensors="pt")
        return out["input_ids"]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Tokenize and encode a batch of prompts."""
        return self(self.tokenize(texts))

    def describe(self) -> str:
        return f"{self.kind} encoder '{self.name}' ({self.hidden_size}-d, context {self.context_length})"
