"""Prompt sets: JSONL files, one prompt a line, checked against the schema when read.

Layout (the shipped sets live in ``evaluation/prompt_sets/``)::

    <root>/general/<lang>.jsonl     the same prompts in every language (same ids, same English)
    <root>/culture/<lang>.jsonl     culture-specific prompts of one language

Every line is an object with string fields ``id`` (letters, digits, ``-``, ``_``, ``.``; at most 200
characters; unique in its file), ``language`` (ISO 639-1, the file's name), ``text`` (the prompt in
that language), ``en`` (its English reference), ``category`` and ``set`` (``general`` or ``culture``).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import PromptSetError
from .languages import SHIPPED, check_language

SHIPPED_ROOT = Path(__file__).resolve().parent / "prompt_sets"
SETS = ("general", "culture")
FIELDS = ("id", "language", "text", "en", "category", "set")
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_ID_LENGTH = 200
"""An id names image files (``<id>_<k>.png``, and the writer's temp name around it): with this bound
they stay within the 255 bytes file systems allow a name."""
SHIPPED_MINIMUMS = {"general": {lang: 100 for lang in SHIPPED},
                    "culture": {lang: 40 if lang == "zh" else 20 for lang in SHIPPED}}
"""Prompts per language file the shipped sets must hold at least."""


@dataclass(frozen=True)
class Prompt:
    """One prompt of a set, in one language."""

    id: str
    language: str
    text: str
    en: str
    category: str
    set: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _parse_line(line: str, where: str, language: str) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise PromptSetError(f"{where}: not a JSON object ({e})") from e
    if not isinstance(obj, dict):
        raise PromptSetError(f"{where}: not a JSON object but {type(obj).__name__}")
    label = f"{where} (id {obj['id']!r})" if isinstance(obj.get("id"), str) else where
    for field in FIELDS:
        value = obj.get(field)
        if not isinstance(value, str) or not value.strip():
            raise PromptSetError(f"{label}: field {field!r} is missing or empty; every line needs "
                                 f"{', '.join(FIELDS)} as non-empty strings")
    if len(obj["id"]) > MAX_ID_LENGTH:
        raise PromptSetError(f"{where}: id is {len(obj['id'])} characters long, at most {MAX_ID_LENGTH} allowed "
                             f"(it names image files, whose names file systems limit to 255 bytes)")
    if not SAFE_ID.fullmatch(obj["id"]):
        raise PromptSetError(f"{label}: id may hold only letters, digits, '-', '_' and '.' (it names image files)")
    check_language(obj["language"], label, PromptSetError)
    if obj["language"] != language:
        raise PromptSetError(f"{label}: language {obj['language']!r} differs from the file's ({language!r})")
    if obj["set"] not in SETS:
        raise PromptSetError(f"{label}: set {obj['set']!r} is neither of {', '.join(SETS)}")
    return Prompt(**{f: obj[f] for f in FIELDS})


def read_prompt_file(path: str | Path) -> list[Prompt]:
    """The prompts of one ``<lang>.jsonl`` file, checked line by line (blank lines are skipped)."""
    path = Path(path)
    language = check_language(path.name.removesuffix(".jsonl"), f"{path} (file name)", PromptSetError)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PromptSetError(f"{path} cannot be read as UTF-8 text: {e}") from e
    prompts, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        prompt = _parse_line(line, f"{path}:{number}", language)
        if prompt.id in seen:
            raise PromptSetError(f"{path}:{number}: id {prompt.id!r} appears twice in the file")
        seen.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        raise PromptSetError(f"{path} holds no prompts")
    return prompts


def resolve_prompt_set(name_or_path: str) -> Path:
    """``general``/``culture`` (the shipped sets) or a folder or ``.jsonl`` file of one's own."""
    path = SHIPPED_ROOT / name_or_path if name_or_path in SETS else Path(name_or_path)
    if not path.exists():
        raise PromptSetError(f"prompt set {name_or_path!r} not found at {path}")
    return path


def language_files(folder: Path) -> dict[str, Path]:
    return {p.name.removesuffix(".jsonl"): p for p in sorted(folder.glob("*.jsonl"))}


def load_prompt_set(path: str | Path, languages: list[str] | None = None) -> list[Prompt]:
    """All prompts of a set folder (or one file), optionally only ``languages``, in file order."""
    path = Path(path)
    if path.is_file():
        prompts = read_prompt_file(path)
        files = {prompts[0].language: path}
    else:
        files = language_files(path)
        if not files:
            raise PromptSetError(f"{path} holds no <lang>.jsonl prompt files")
    for lang in languages or ():
        check_language(lang, "--languages", PromptSetError)
        if lang not in files:
            raise PromptSetError(f"{path} has no prompts in {lang!r} (it has {', '.join(files)})")
    return [p for lang, file in files.items() if not languages or lang in languages for p in read_prompt_file(file)]


def check_collection(root: str | Path, minimums: dict[str, dict[str, int]] = SHIPPED_MINIMUMS) -> dict[str, dict[str, int]]:
    """Check a collection of sets (``root/<set>/<lang>.jsonl``): every file parses, holds at least
    its minimum of prompts of its own set, and the general set has the same ids with the same
    English references in every language. Returns the counts per set and language."""
    root = Path(root)
    counts: dict[str, dict[str, int]] = {}
    for set_name, wanted in minimums.items():
        files = language_files(root / set_name)
        by_language = {}
        for lang, minimum in wanted.items():
            if lang not in files:
                raise PromptSetError(f"{root / set_name} has no {lang}.jsonl")
            prompts = read_prompt_file(files[lang])
            if len(prompts) < minimum:
                raise PromptSetError(f"{files[lang]} holds {len(prompts)} prompts; at least {minimum} are expected")
            wrong = [p.id for p in prompts if p.set != set_name]
            if wrong:
                raise PromptSetError(f"{files[lang]}: prompts {wrong[:5]} do not say set {set_name!r}")
            by_language[lang] = prompts
        if set_name == "general":
            _check_same_references({files[lang]: prompts for lang, prompts in by_language.items()})
        counts[set_name] = {lang: len(prompts) for lang, prompts in by_language.items()}
    return counts


def _check_same_references(sets: dict[Path, list[Prompt]]) -> None:
    """The general set means the same in every language: the same ids with the same English."""
    (first, reference), *others = [(path, {p.id: p.en for p in prompts}) for path, prompts in sets.items()]
    for path, references in others:
        if set(references) != set(reference):
            only_here, only_there = sorted(set(references) - set(reference)), sorted(set(reference) - set(references))
            raise PromptSetError(f"{path} and {first} hold different ids: only in {path.name}: {only_here[:5]}, "
                                 f"only in {first.name}: {only_there[:5]}")
        for pid, en in references.items():
            if en != reference[pid]:
                raise PromptSetError(f"{path}: id {pid!r} has English {en!r} but {first.name} has {reference[pid]!r}; "
                                     f"the same id must carry the same English reference")
