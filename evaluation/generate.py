"""Generating the evaluation images through ComfyUI: methods, the image plan, resumable output.

Images go to ``<out>/images/<method>/<lang>/<prompt id>_<k>.png`` (seed = base seed + k, the same
for every method), each written atomically. The settings that shape the images, the model files
by their content (:mod:`evaluation.identity`), are recorded (``<out>/run.json`` and
``<out>/images/<method>/<lang>/settings.json``) and again in each PNG with the image's text and
seed. An image on disk is kept only where what its PNG records is what the job asks for; a later
run with other settings, changed model files or edited prompt texts is refused with what changed,
or, with ``remake=True`` (``--remake-changed``), makes the changed images again.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from adapters.clip_score import to_pil
from adapters.file_format import atomic_write, remove_abandoned_temp_files

from .errors import EvaluationError
from .graph import GraphExecutor, Sampling, english_graph, pea_graph
from .identity import ContentIds
from .prompts import Prompt


@dataclass(frozen=True)
class Method:
    """One way of turning a prompt into conditioning."""

    name: str
    kind: str
    """``english`` (the English reference, checkpoint CLIP), ``translate`` (translated, checkpoint
    CLIP) or ``pea`` (the prompt itself through an adapter)."""
    adapter: Path | None = None


@dataclass(frozen=True)
class Job:
    method: Method
    prompt: Prompt
    k: int
    seed: int
    text: str
    path: Path
    settings: dict
    """What shapes the image besides its text and seed (:func:`run_record` and :func:`method_record`)."""

    def record(self) -> dict:
        """What made the image, as its PNG records it."""
        return {"method": self.method.name, "language": self.prompt.language, "id": self.prompt.id,
                "text": self.text, "seed": self.seed, "settings": self.settings}


def method_name(adapter: Path) -> str:
    return "pea-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", adapter.name.removesuffix(".safetensors"))


def changed_fields(before: object, now: object, where: str = "") -> list[str]:
    """The ``/``-joined keys where two records differ (a folder's files by their names)."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [field for k in sorted(set(before) | set(now), key=str)
                for field in changed_fields(before.get(k), now.get(k), f"{where}/{k}" if where else str(k))]
    return [] if before == now else [where or "the record"]


REMAKE = "rerun with --remake-changed to make them again, or use another --out folder"


def check_record(path: Path, record: dict, remake: bool = False) -> None:
    """Write ``record`` at ``path``, or check it against the one a previous run wrote there: a
    difference is refused, naming the fields that changed, or with ``remake`` the new record is
    written (the images it covers are then remade, their PNGs no longer matching)."""
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = changed_fields(previous, record)
        if not changed:
            return
        if not remake:
            raise EvaluationError(
                f"{path.parent} holds images made with other settings or model files ({', '.join(changed)} "
                f"changed since {path} was written): {REMAKE}")
        print(f"{path.parent}: {', '.join(changed)} changed; the images made before are made again")
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2, ensure_ascii=False),
                                                          encoding="utf-8"))


PROBE = Sampling(512, 512, 1, 1.0, "euler", "normal")
"""Sampling settings of the graph that loads the checkpoint before the size is known (only its
loader runs; its output stays in ComfyUI's cache for the first image)."""


class Generator:
    """Samples images through ComfyUI's executor with one checkpoint and one language CLIP."""

    def __init__(self, checkpoint: Path, language_clip: Path | None):
        from comfy_runtime import load_pack

        load_pack()
        self.executor = GraphExecutor()
        self.checkpoint = self._register("checkpoints", checkpoint)
        self.language_clip = None if language_clip is None else self._register("language_clip", language_clip)
        self.adapters: dict[Path, str] = {}

    @staticmethod
    def _register(folder_name: str, path: Path) -> str:
        """Make ``path`` pickable by name in ComfyUI's model folders (in this process only)."""
        import folder_paths

        if not path.exists():
            raise EvaluationError(f"{folder_name}: {path} not found")
        folder_paths.add_model_folder_path(folder_name, str(path.resolve().parent), is_default=True)
        return path.name

    def native_size(self, needs_clip: bool) -> int:
        """Load the checkpoint: SD1.5 (512) or SDXL family (1024), with a CLIP where the baselines need one."""
        import comfy.model_base
        import comfy.supported_models

        model, clip, _vae = self.executor.run(english_graph(self.checkpoint, "", PROBE, 0), "checkpoint")
        if needs_clip and clip is None:
            raise EvaluationError(f"checkpoint {self.checkpoint} holds no text encoder, which the English and "
                                  f"translation baselines need (leave them out with --baselines none)")
        if isinstance(model.model, comfy.model_base.SDXL):
            return 1024
        if isinstance(model.model.model_config, comfy.supported_models.SD15):
            return 512
        raise EvaluationError(f"checkpoint {self.checkpoint} is a {type(model.model.model_config).__name__} model; "
                              f"the evaluator samples SD1.5- and SDXL-family checkpoints")

    def adapter_name(self, adapter: Path) -> str:
        """The name Apply PEA Adapter picks ``adapter`` by."""
        if adapter not in self.adapters:
            self.adapters[adapter] = self._register("pea_adapters", adapter)
        return self.adapters[adapter]

    def graph(self, job: Job, sampling: Sampling) -> dict:
        if job.method.kind != "pea":
            return english_graph(self.checkpoint, job.text, sampling, job.seed)
        return pea_graph(self.checkpoint, self.language_clip, self.adapter_name(job.method.adapter), job.text,
                         sampling, job.seed)

    def make(self, jobs: list[Job], sampling: Sampling, remake: bool = False) -> int:
        """Sample every job whose image is missing (or, with ``remake``, made otherwise), in order;
        the number made."""
        import comfy.utils

        comfy.utils.PROGRESS_BAR_ENABLED = False  # one bar for the run, not one per KSampler call
        for folder in dict.fromkeys(j.path.parent for j in jobs):  # writes a killed run left half-done
            remove_abandoned_temp_files(folder)
        todo = jobs_to_make(jobs, remake)
        with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="generating", unit="image") as bar:
            self.executor.host.on_progress = lambda node, step, of: bar.set_postfix_str(f"{node}: step {step}/{of}")
            for job in todo:
                (images,) = self.executor.run(self.graph(job, sampling), "decode")
                save_png(to_pil(images)[0], job.path, job.record())
                bar.update()
        return len(todo)


def png_record(path: Path) -> dict | None:
    """What the PNG at ``path`` records of its making (None where it records nothing readable)."""
    try:
        with Image.open(path) as im:
            return json.loads(im.text["pea_evaluation"])
    except (OSError, KeyError, ValueError, SyntaxError):
        return None


def jobs_to_make(jobs: list[Job], remake: bool = False) -> list[Job]:
    """The jobs whose image is missing or was made otherwise (text, seed, method or settings in
    its PNG differ from the job's); the latter are refused, naming the image and the fields,
    unless ``remake``."""
    todo, changed = [], []
    for job in jobs:
        if job.path.is_file():
            made = png_record(job.path)
            fields = changed_fields(made, job.record()) if made is not None else ["no pea_evaluation record"]
            if not fields:
                continue
            changed.append(f"{job.path} ({', '.join(fields)})")
        todo.append(job)
    if changed and not remake:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise EvaluationError(f"{len(changed)} image(s) on disk were made otherwise than this run asks: "
                              f"{'; '.join(changed[:3])}{more} changed: {REMAKE}")
    return todo


def save_png(image: Image.Image, path: Path, info: dict) -> None:
    """A PNG written atomically, with what made it in a ``pea_evaluation`` text chunk."""
    meta = PngInfo()
    meta.add_text("pea_evaluation", json.dumps(info, ensure_ascii=False))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=meta))


def prompt_text(method: Method, prompt: Prompt, translations: dict[tuple[str, str], str]) -> str:
    """What a method feeds its text encoder for ``prompt``."""
    if method.kind == "english":
        return prompt.en
    if method.kind == "translate":
        return translations[(prompt.language, prompt.id)]
    return prompt.text


def plan(methods: list[Method], prompts: list[Prompt], translations: dict[tuple[str, str], str],
         images_per_prompt: int, seed: int, out: Path, settings: dict[tuple[str, str], dict]) -> list[Job]:
    """Every image of the run, method by method (so each method's models load once);
    ``settings[method name, language]`` is what else shapes those images."""
    return [Job(method, prompt, k, seed + k, prompt_text(method, prompt, translations),
                out / "images" / method.name / prompt.language / f"{prompt.id}_{k}.png",
                settings[method.name, prompt.language])
            for method in methods for prompt in prompts for k in range(images_per_prompt)]


def method_record(method: Method, language_clip: Path | None, translation_model: Path | None,
                  ids: ContentIds) -> dict:
    """What, besides the run's sampling settings, shapes a method's images in one language."""
    record: dict = {"kind": method.kind}
    if method.kind == "pea":
        record.update(adapter=ids.of(method.adapter), language_clip=ids.of(language_clip))
    if method.kind == "translate":
        record["translation_model"] = ids.of(translation_model)
    return record


def run_record(checkpoint: Path, sampling: Sampling, seed: int, ids: ContentIds) -> dict:
    """What shapes every image of the run."""
    return {"checkpoint": ids.of(checkpoint), "sampling": asdict(sampling), "seed": seed}
