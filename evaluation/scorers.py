"""Which CLIP scores which language: one that reads it, or a refusal naming the option to give.

A scorer reads a language when (1) its kind does not declare other languages (Chinese-CLIP is
trained on Chinese text, OpenAI's CLIP on English; AltCLIP and multilingual open_clip folders
declare none here and are judged by (2) alone) and (2) its tokenizer knows the language's
prompts: at most ``UNKNOWN_LIMIT`` of their tokens are the unknown token. A scorer given for
one language (``--score-clip ru=FOLDER``) is the user's word for (1); (2) is checked for every
scorer. Only tokenizers are read here, before anything is generated.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters.clip_score import check_scorer_path
from adapters.encoders.hf_text import hf_model_type, load_tokenizer
from adapters.encoders.open_clip_text import CONFIG_NAME as OPEN_CLIP_CONFIG, find_text_tower, read_model_config

from .errors import EvaluationError
from .languages import LANGUAGES
from .prompts import Prompt

UNKNOWN_LIMIT = 0.05
"""The largest share of unknown tokens over a language's prompts that a scorer may show."""
DECLARED = {"chinese_clip": ("zh",), "clip": ("en",)}
"""Kinds of scorer (config ``model_type``) -> the languages their text tower was trained on."""


@dataclass(frozen=True)
class ScorerChoice:
    """The scorer of one language's prompts and how well its tokenizer knows them."""

    path: Path
    kind: str
    unknown_rate: float

    def as_dict(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "unknown_rate": self.unknown_rate}


def scorer_kind(folder: Path) -> str:
    """``open_clip`` or the folder's config ``model_type``."""
    return "open_clip" if (folder / OPEN_CLIP_CONFIG).is_file() else hf_model_type(folder)


def scorer_tokenizer(folder: Path):
    """The Hugging Face tokenizer of a scorer folder (an open_clip folder's text-tower subfolder)."""
    if (folder / OPEN_CLIP_CONFIG).is_file():
        return load_tokenizer(find_text_tower(folder, read_model_config(folder)["text_cfg"]["hf_model_name"]))
    return load_tokenizer(folder)


def unknown_rate(tokenizer, texts: list[str]) -> float:
    """The share of the tokens of ``texts`` (specials left out) that are the tokenizer's unknown
    token; 0 for a tokenizer without one (byte-level BPE reads any text)."""
    unk = tokenizer.unk_token_id
    ids = [i for row in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] for i in row]
    if unk is None or not ids:
        return 0.0
    return sum(i == unk for i in ids) / len(ids)


def choose_scorer(path: Path, language: str, prompts: list[Prompt], option: str, for_language: bool) -> ScorerChoice:
    """``path`` as the scorer of ``language``'s prompts, or :class:`EvaluationError` saying why it
    cannot read them and which option gives one that can; ``for_language``: the user named
    ``path`` for this language (``option LANG=FOLDER``)."""
    path = check_scorer_path(path)
    kind = scorer_kind(path)
    name = LANGUAGES[language][0]
    fix = (f"give a CLIP that reads {name}: {option} {language}=FOLDER (a multilingual open_clip "
           f"xlm-roberta folder reads it, see docs/evaluation.md)")
    declared = DECLARED.get(kind)
    if declared and language not in declared and not for_language:
        readable = ", ".join(LANGUAGES[lang][0] for lang in declared)
        raise EvaluationError(f"{option}: {path.name} ({kind}) reads {readable}, not the {name} prompts; {fix}")
    rate = unknown_rate(scorer_tokenizer(path), [p.text for p in prompts if p.language == language])
    if rate > UNKNOWN_LIMIT:
        raise EvaluationError(
            f"{option}: {path.name} does not read the {name} prompts ({rate:.0%} of their tokens are unknown "
            f"to its tokenizer; at most {UNKNOWN_LIMIT:.0%} is accepted); {fix}")
    return ScorerChoice(path, kind, rate)
