"""Captions longer than the language encoder's context window: the encoder sees only their first
``context_length`` tokens, so the trainer counts them and says how much is cut."""
from __future__ import annotations

import os
from typing import Protocol

from adapters.encoders.tokenizer_guard import tokenizer_panics

CHUNK = 1024


class Captioned(Protocol):
    """A sample with a caption (``sampling.Record``)."""

    text: str


class CaptionWindow:
    """Measures captions (``Record.text``) with ``tokenizer`` (of the encoder at ``where``) against
    ``window`` tokens."""

    def __init__(self, tokenizer, window: int, where: str | os.PathLike):
        self.tokenizer, self.window, self.where = tokenizer, window, where
        self.checked = self.over = self.tokens_cut = self.most_cut = 0
        self.examples: list[str] = []

    def measure(self, records: list[Captioned]) -> None:
        for lo in range(0, len(records), CHUNK):
            chunk = records[lo:lo + CHUNK]
            with tokenizer_panics(self.where):
                ids = self.tokenizer([r.text for r in chunk], truncation=False, verbose=False)["input_ids"]
            for record, tokens in zip(chunk, ids):
                self.checked += 1
                cut = len(tokens) - self.window
                if cut > 0:
                    self.over += 1
                    self.tokens_cut += cut
                    self.most_cut = max(self.most_cut, cut)
                    if len(self.examples) < 5:
                        self.examples.append(f"{record.where or record.image}: {len(tokens)} tokens")

    def summary(self) -> dict:
        """What ``summary.json`` reports."""
        return {"window": self.window, "checked": self.checked, "over_window": self.over,
                "tokens_cut": self.tokens_cut, "most_tokens_cut": self.most_cut, "examples": self.examples}

    def merge(self, summaries: list[dict]) -> None:
        """Add the counts other processes made (each measured different captions)."""
        for s in summaries:
            self.checked += s["checked"]
            self.over += s["over_window"]
            self.tokens_cut += s["tokens_cut"]
            self.most_cut = max(self.most_cut, s["most_tokens_cut"])
            self.examples = (self.examples + s["examples"])[:5]

    def message(self) -> str | None:
        """A warning for the user, or None when every caption fits."""
        if not self.over:
            return None
        return (f"{self.over} of {self.checked} captions are longer than the language encoder's window of "
                f"{self.window} tokens and are cut: {self.tokens_cut} tokens in all, up to {self.most_cut} from one "
                f"caption (e.g. {'; '.join(self.examples[:3])}). Shorten them, or pass a larger --context-length "
                f"if the encoder has the positions for it.")
