"""How good is an adapter? Generate a prompt set through ComfyUI with adapters and baselines, score it.

    python -m evaluation.evaluate --checkpoint ComfyUI/models/checkpoints/sd_xl_base_1.0.safetensors \\
        --language-clip ComfyUI/models/language_clip/chinese-clip-vit-huge-patch14 \\
        --adapter ComfyUI/models/pea_adapters/pea_sdxl_zh.safetensors \\
        --prompt-set culture --languages zh --translation-model zh=opus-mt-zh-en \\
        --english-clip clip-vit-large-patch14 --images-per-prompt 4 --out eval/zh_sdxl

Methods: each adapter (the prompt through Load Language CLIP -> Apply PEA Adapter -> PEA Encode
Prompt), ``english`` (the English reference through the checkpoint's CLIP: the upper
reference) and ``translate`` (a local translation model, then the checkpoint's CLIP). Rerun the
same command to resume: images already in ``--out`` are kept where their PNG records the same
text, seed, settings and model files (by content); otherwise the run is refused with what
changed, or, with ``--remake-changed``, those images are made again.

Each language is scored by a CLIP that reads it (``--score-clip LANG=FOLDER``; the
``--language-clip`` folder where it reads that language, else the run is refused), optionally
also by a second, judging CLIP (``--judge-clip``); each adapter is compared with ``translate``
and ``english`` prompt by prompt (see :mod:`evaluation.paired`).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from adapters.clip_score import check_scorer_path, load_clip_scorer
from adapters.errors import PEAError
from adapters.file_format import atomic_write

from .errors import EvaluationError
from .generate import Generator, Method, check_record, method_name, method_record, plan, run_record
from .graph import Sampling
from .identity import ContentIds
from .languages import LANGUAGES
from .metrics import SCORES, fid_by_method, score_images, summarize, truncated_prompts
from .paired import comparisons
from .prompts import Prompt, load_prompt_set, resolve_prompt_set
from .report import write_report
from .scorers import ScorerChoice, choose_scorer

BASELINES = ("english", "translate", "none")


def by_language(values: list[str], option: str) -> dict[str | None, Path]:
    """``[LANG=]PATH`` options: language -> path, ``None`` for the one without a language."""
    mapping: dict[str | None, Path] = {}
    for value in values:
        lang, sep, rest = value.partition("=")
        key, path = (lang, rest) if sep and lang in LANGUAGES else (None, value)
        if key in mapping:
            raise EvaluationError(f"{option} is given twice for {key or 'all languages'}")
        mapping[key] = Path(path)
    return mapping


def for_language(mapping: dict[str | None, Path], language: str, option: str, default: Path | None = None) -> Path:
    path = mapping.get(language) or mapping.get(None) or default
    if path is None:
        raise EvaluationError(f"no {option} for the {LANGUAGES[language][0]} prompts: give {option} "
                              f"{language}=FOLDER (or one FOLDER for every language)")
    return path


def choose_scorers(values: list[str], default: Path | None, option: str, prompts: list[Prompt],
                   languages: list[str]) -> dict[str, ScorerChoice]:
    """The scorer of each language from ``option`` values (or ``default``), each checked to read
    the language's prompts; {} where neither is given."""
    mapping = by_language(values, option)
    if not mapping and default is None:
        return {}
    return {lang: choose_scorer(for_language(mapping, lang, option, default), lang, prompts, option, lang in mapping)
            for lang in languages}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evaluation.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="an SD1.5 or SDXL checkpoint file")
    p.add_argument("--language-clip", type=Path, help="the language encoder folder or file the adapters read")
    p.add_argument("--adapter", type=Path, action="append", default=[], help="a PEA adapter file (repeat for more)")
    p.add_argument("--prompt-set", default="general", help="general, culture, or a folder / .jsonl file of your own")
    p.add_argument("--languages", nargs="+", help="only these languages (ISO 639-1; default: all in the set)")
    p.add_argument("--limit", type=int, help="only the first N prompts of each language")
    p.add_argument("--images-per-prompt", type=int, default=4, help="images per prompt and method (seeds seed..seed+N-1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--scheduler", default="karras")
    p.add_argument("--width", type=int, help="default: 512 for SD1.5, 1024 for SDXL")
    p.add_argument("--height", type=int, help="default: 512 for SD1.5, 1024 for SDXL")
    p.add_argument("--baselines", nargs="+", choices=BASELINES,
                   help="default: english, and translate when --translation-model is given; none: adapters only")
    p.add_argument("--translation-model", action="append", default=[], metavar="[LANG=]FOLDER",
                   help="a MarianMT / NLLB / M2M100 folder into English (repeat per language)")
    p.add_argument("--score-clip", action="append", default=[], metavar="[LANG=]FOLDER",
                   help="a CLIP with a vision tower reading that language (default: --language-clip, "
                        "where it reads that language)")
    p.add_argument("--judge-clip", action="append", default=[], metavar="[LANG=]FOLDER",
                   help="a second, independent CLIP that scores the same images, reported beside the first")
    p.add_argument("--english-clip", type=Path, help="a Hugging Face CLIP folder to score the English references")
    p.add_argument("--fid-reference", type=Path, help="a folder of reference images: FID per method")
    p.add_argument("--inception-weights", type=Path, help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth")
    p.add_argument("--fid-dims", type=int, default=2048, help="Inception feature layer (2048 is FID proper)")
    p.add_argument("--grid-size", type=int, default=160, help="pixels per image in the grids and the page")
    p.add_argument("--cpu", action="store_true", help="run everything on the CPU")
    p.add_argument("--out", type=Path, required=True, help="output folder (rerun to resume)")
    p.add_argument("--remake-changed", action="store_true",
                   help="make again the images whose settings, model files or prompt texts changed since they "
                        "were made (default: such a run is refused)")
    return p.parse_args(argv)


def choose_methods(args) -> list[Method]:
    baselines = args.baselines or (["english", "translate"] if args.translation_model else ["english"])
    if "none" in baselines and len(baselines) > 1:
        raise EvaluationError("--baselines none cannot be combined with other baselines")
    methods = [Method(b, b) for b in baselines if b != "none"]
    for adapter in args.adapter:
        if not adapter.is_file():
            raise EvaluationError(f"--adapter: {adapter} not found")
        if args.language_clip is None:
            raise EvaluationError("--adapter needs --language-clip (the encoder the adapter reads)")
        name = method_name(adapter)
        if name in [m.name for m in methods]:
            raise EvaluationError(f"two adapters are both called {name}: rename one")
        methods.append(Method(name, "pea", adapter))
    if not methods:
        raise EvaluationError("nothing to evaluate: give --adapter or leave a baseline in --baselines")
    return methods


def select_prompts(args) -> list[Prompt]:
    """The prompt set, filtered by language, the first ``--limit`` prompts of each language."""
    prompts = load_prompt_set(resolve_prompt_set(args.prompt_set), args.languages)
    if not args.limit:
        return prompts
    kept: list[Prompt] = []
    for p in prompts:
        if sum(q.language == p.language for q in kept) < args.limit:
            kept.append(p)
    return kept


def translate_prompts(prompts: list[Prompt], models: dict[str, Path], out: Path, device: str,
                      ids: ContentIds) -> tuple[dict[tuple[str, str], str], dict[str, dict]]:
    """English translations of every prompt, cached in ``<out>/translations/<lang>.json`` by the
    translation model's content and the source text (an edited prompt is translated again); and,
    per language, the prompts the model cut to its length limit."""
    from .translate import load_translator

    translations, truncation = {}, {}
    for language in dict.fromkeys(p.language for p in prompts):
        model = models[language]
        own = [p for p in prompts if p.language == language]
        cache = out / "translations" / f"{language}.json"
        record = ids.of(model) if model.is_dir() else None  # not a folder: load_translator says so
        stored = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
        texts = stored["texts"] if stored.get("model") == record and "truncated" in stored else {}
        cut = set(stored.get("truncated", [])) & set(texts)
        todo = list(dict.fromkeys(p.text for p in own if p.text not in texts))
        if todo:
            translator = load_translator(model, device)
            texts.update(zip(todo, translator.translate(todo, language)))
            cut |= {t for t, c in zip(todo, translator.truncated(todo)) if c}
            data = json.dumps({"model": record, "texts": texts, "truncated": sorted(cut)}, indent=2,
                              ensure_ascii=False)
            atomic_write(cache, lambda tmp: Path(tmp).write_text(data, encoding="utf-8"))
        translations.update({(language, p.id): texts[p.text] for p in own})
        truncation[language] = {"path": str(model), "prompts": len(own),
                                "truncated": [p.id for p in own if p.text in cut]}
    return translations, truncation


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(run(args))
    except (PEAError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(args) -> str:
    """The whole evaluation; returns the summary to print."""
    methods = choose_methods(args)
    prompts = select_prompts(args)
    languages = list(dict.fromkeys(p.language for p in prompts))
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    translation_models = by_language(args.translation_model, "--translation-model")
    needs_translation = any(m.kind == "translate" for m in methods)
    models = {lang: for_language(translation_models, lang, "--translation-model") for lang in languages} \
        if needs_translation else {}
    scorers = choose_scorers(args.score_clip, args.language_clip, "--score-clip", prompts, languages)
    if not scorers:
        raise EvaluationError("no CLIP to score with: give --score-clip [LANG=]FOLDER (or --language-clip)")
    judges = choose_scorers(args.judge_clip, None, "--judge-clip", prompts, languages)
    if args.english_clip:
        check_scorer_path(args.english_clip)
    if (args.fid_reference is None) != (args.inception_weights is None):
        raise EvaluationError("FID needs both --fid-reference and --inception-weights")
    ids = ContentIds(args.out)
    translations, translation_cut = translate_prompts(prompts, models, args.out, device, ids) \
        if needs_translation else ({}, {})

    from comfy_runtime import import_comfy

    import_comfy(cpu=True if args.cpu else None)
    generator = Generator(args.checkpoint, args.language_clip)
    native = generator.native_size(needs_clip=any(m.kind != "pea" for m in methods))
    sampling = Sampling(args.width or native, args.height or native, args.steps, args.cfg, args.sampler, args.scheduler)
    shared = run_record(args.checkpoint, sampling, args.seed, ids)
    check_record(args.out / "run.json", shared, args.remake_changed)
    settings_of = {}
    for method in methods:
        for lang in languages:
            record = method_record(method, args.language_clip, models.get(lang), ids)
            check_record(args.out / "images" / method.name / lang / "settings.json", record, args.remake_changed)
            settings_of[method.name, lang] = {**shared, **record}
    jobs = plan(methods, prompts, translations, args.images_per_prompt, args.seed, args.out, settings_of)
    made = generator.make(jobs, sampling, args.remake_changed)
    release_comfy_models()

    loaded = {c.path: load_clip_scorer(c.path, device=device) for c in [*scorers.values(), *judges.values()]}
    own = {lang: loaded[c.path] for lang, c in scorers.items()}
    judging = {lang: loaded[c.path] for lang, c in judges.items()}
    english = load_clip_scorer(args.english_clip, device=device) if args.english_clip else None
    records = score_images(jobs, own, judging, english)
    scoring = scoring_report(prompts, scorers, own, judges, judging, english, translation_cut, ids)
    del loaded, own, judging, english
    summary = summarize(records)
    compared = {score: comparisons(records, score) for score in SCORES
                if any(r[score] is not None for r in records)}
    fid = None
    if args.fid_reference:
        from .fid import FID

        metric = FID(args.inception_weights, device, dims=args.fid_dims)
        count = metric.set_reference(args.fid_reference)
        fid = fid_by_method(records, metric)
        fid = {m: {**v, "reference_images": count} for m, v in fid.items()}
    settings = {"checkpoint": str(args.checkpoint), "sampling": asdict(sampling), "seed": args.seed,
                "images_per_prompt": args.images_per_prompt, "prompt_set": args.prompt_set, "languages": languages,
                "methods": {m.name: str(m.adapter) if m.adapter else m.kind for m in methods},
                "language_clip": str(args.language_clip) if args.language_clip else None,
                "english_clip": str(args.english_clip) if args.english_clip else None,
                "translation_models": {lang: str(p) for lang, p in models.items()},
                "fid_reference": str(args.fid_reference) if args.fid_reference else None}
    files = write_report(args.out, settings, scoring, summary, compared, fid, records, args.grid_size)
    return (f"{made} new images ({len(jobs) - made} already there); wrote {files['json']}, {files['markdown']}, "
            f"{files['html']} and {len(files['grids'])} grid(s)")


def scoring_report(prompts: list[Prompt], scorers: dict[str, ScorerChoice], own: dict, judges: dict[str, ScorerChoice],
                   judging: dict, english, translation: dict[str, dict], ids: ContentIds) -> dict[str, dict]:
    """language -> each scorer of its prompts (path, kind, unknown-token rate, its files' content
    ``identity``) with the prompts it cut short ("truncated"), the English references the English
    CLIP cut short, and the prompts the translation model cut short."""
    cut = truncated_prompts(prompts, own)
    judge_cut = truncated_prompts(prompts, judging)
    english_cut = truncated_prompts(prompts, {lang: english for lang in own}, english=True) if english else {}
    english_id = {"identity": ids.of(english.path)} if english else {}

    def scorer(choice: ScorerChoice, truncated: dict) -> dict:
        return {**choice.as_dict(), "identity": ids.of(choice.path), **truncated}

    return {lang: {"score_clip": scorer(choice, cut[lang]),
                   "judge_clip": scorer(judges[lang], judge_cut[lang]) if lang in judges else None,
                   "english_clip": {**english_cut[lang], **english_id} if lang in english_cut else None,
                   "translation": translation.get(lang)}
            for lang, choice in scorers.items()}


def release_comfy_models() -> None:
    """Hand ComfyUI's models back before the scoring models load."""
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.soft_empty_cache()


if __name__ == "__main__":
    sys.exit(main())
