"""The translate-then-encode baseline: a local translation model into English.

MarianMT (Helsinki-NLP opus-mt-<src>-en, one folder per language, or opus-mt-mul-en), NLLB-200
and M2M100 folders load with transformers from local files only (``trust_remote_code=False``);
decoding follows the folder's own generation config (beam search for opus-mt). A prompt longer than
the model's positions is cut to its start (:meth:`Translator.truncated` says which).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import transformers

from adapters.encoders.base import position_count
from adapters.encoders.hf_text import hf_model_type, load_tokenizer
from adapters.encoders.tokenizer_guard import tokenizer_panics
from adapters.errors import EncoderLoadError

from .errors import EvaluationError
from .languages import check_language, nllb_code

MODEL_TYPES = {"marian": "MarianMT", "m2m_100": "NLLB-200 or M2M100"}


class Translator:
    """A sequence-to-sequence model that translates prompts into English."""

    def __init__(self, model, tokenizer, folder: Path):
        self.model = model
        self.tokenizer = tokenizer
        self.folder = folder
        self.nllb = type(tokenizer).__name__.startswith("Nllb")
        positions = position_count(model.config)
        self.max_length = min(tokenizer.model_max_length, positions or tokenizer.model_max_length)
        """The most source tokens (specials included) the encoder reads; a longer prompt is cut."""

    def truncated(self, texts: list[str]) -> list[bool]:
        """Whether each text is longer than the model reads (then only its start is translated)."""
        with tokenizer_panics(self.folder):
            lengths = [len(ids) for ids in self.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]
        return [n > self.max_length for n in lengths]

    def _target_token(self) -> int | None:
        if hf_model_type(self.folder) != "m2m_100":
            return None  # MarianMT models into English have no target-language token
        return self.tokenizer.convert_tokens_to_ids("eng_Latn" if self.nllb else "__en__")

    @torch.no_grad()
    def translate(self, texts: list[str], source: str, batch_size: int = 16) -> list[str]:
        """English translations of ``texts`` written in ``source`` (ISO 639-1)."""
        check_language(source, f"translation with {self.folder}")
        with tokenizer_panics(self.folder):
            if hf_model_type(self.folder) == "m2m_100":
                self.tokenizer.src_lang = nllb_code(source) if self.nllb else source
            extra = {"forced_bos_token_id": self._target_token()} if self._target_token() is not None else {}
            out = []
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                       truncation=True, max_length=self.max_length)
                ids = self.model.generate(**{k: v.to(self.model.device) for k, v in batch.items()}, **extra)
                out += [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return out


def load_translator(folder: str | os.PathLike, device: torch.device | str = "cpu") -> Translator:
    """Load a MarianMT, NLLB or M2M100 folder; errors name the folder and what was expected."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"translation model folder not found: {folder} (a MarianMT, NLLB or M2M100 "
                              f"folder with config.json, weights and tokenizer files)")
    try:
        model_type = hf_model_type(folder)
    except EncoderLoadError as e:
        raise EvaluationError(str(e)) from e
    if model_type not in MODEL_TYPES:
        found = f"model_type {model_type!r}" if model_type else "no config.json"
        raise EvaluationError(f"{folder} has {found}; a translation model is expected: "
                              f"{', '.join(f'{v} ({k})' for k, v in MODEL_TYPES.items())}")
    try:
        tokenizer = load_tokenizer(folder)
        model, info = transformers.AutoModelForSeq2SeqLM.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, output_loading_info=True)
    except (EncoderLoadError, OSError, ValueError) as e:
        raise EvaluationError(f"cannot load the translation model in {folder}: {e}") from e
    missing = sorted(info["missing_keys"])
    if missing:
        raise EvaluationError(f"the weights in {folder} do not fit its config.json: missing {missing[:5]}")
    return Translator(model.eval().requires_grad_(False).to(device), tokenizer, folder)
