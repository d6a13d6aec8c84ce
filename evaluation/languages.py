"""Language codes the prompt sets and the translation baseline know (ISO 639-1)."""
from __future__ import annotations

from .errors import EvaluationError

LANGUAGES: dict[str, tuple[str, str]] = {
    # ISO 639-1 -> (English name, NLLB-200 / FLORES-200 code)
    "ar": ("Arabic", "arb_Arab"), "de": ("German", "deu_Latn"), "en": ("English", "eng_Latn"),
    "es": ("Spanish", "spa_Latn"), "fr": ("French", "fra_Latn"), "hi": ("Hindi", "hin_Deva"),
    "id": ("Indonesian", "ind_Latn"), "it": ("Italian", "ita_Latn"), "ja": ("Japanese", "jpn_Jpan"),
    "ko": ("Korean", "kor_Hang"), "nl": ("Dutch", "nld_Latn"), "pl": ("Polish", "pol_Latn"),
    "pt": ("Portuguese", "por_Latn"), "ru": ("Russian", "rus_Cyrl"), "th": ("Thai", "tha_Thai"),
    "tr": ("Turkish", "tur_Latn"), "uk": ("Ukrainian", "ukr_Cyrl"), "vi": ("Vietnamese", "vie_Latn"),
    "zh": ("Chinese", "zho_Hans"),
}
SHIPPED = ("zh", "ru", "ko", "ja", "it", "fr", "de", "es")
"""The languages the shipped prompt sets are written in."""


def check_language(code: str, where: str, error: type[EvaluationError] = EvaluationError) -> str:
    """``code`` if it is a known ISO 639-1 code, else ``error`` naming ``where`` it came from."""
    if code not in LANGUAGES:
        raise error(
            f"{where}: unknown language code {code!r}; expected an ISO 639-1 code, one of {', '.join(LANGUAGES)}")
    return code


def nllb_code(code: str) -> str:
    """The FLORES-200 code NLLB tokenizers use for an ISO 639-1 code."""
    return LANGUAGES[check_language(code, "NLLB translation")][1]
