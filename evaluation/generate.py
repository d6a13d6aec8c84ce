"""Generating the evaluation images through ComfyUI: methods, the image plan, resumable output.

Images go to ``<out>/images/<method>/<lang>/<prompt id>_<k>.png`` (seed = base seed + k, the same
for every method), each written atomically; an image already on disk is not made again. The
settings that shape the images are recorded (``<out>/run.json`` and
``<out>/images/<method>/<lang>/settings.json``), and a later run into the same folder with other
settings is refused rather than mixing images of two set-ups.
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


def method_name(adapter: Path) -> str:
    return "pea-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", adapter.name.removesuffix(".safetensors"))


def fingerprint(path: Path) -> dict:
    """What identifies a model file or folder without reading it: where it is and its bytes."""
    path = path.resolve()
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return {"path": str(path), "bytes": sum(p.stat().st_size for p in files)}


def check_record(path: Path, record: dict) -> None:
    """Write ``record`` at ``path``, or check it against the one a previous run wrote there."""
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(previous) | set(record) if previous.get(k) != record.get(k))
        if changed:
            raise EvaluationError(
                f"{path.parent} holds images made with other settings ({', '.join(changed)} differ: "
                f"{ {k: previous.get(k) for k in changed} } before, now { {k: record.get(k) for k in changed} }). "
                f"Use another --out folder, or delete {path.parent} to make them again.")
        return
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

    def make(self, jobs: list[Job], sampling: Sampling) -> int:
        """Sample every job whose image is missing, in order; the number made."""
        import comfy.utils

        comfy.utils.PROGRESS_BAR_ENABLED = False  # one bar for the run, not one per KSampler call
        for folder in dict.fromkeys(j.path.parent for j in jobs):  # writes a killed run left half-done
            remove_abandoned_temp_files(folder)
        todo = [j for j in jobs if not j.path.is_file()]
        with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="generating", unit="image") as bar:
            self.executor.host.on_progress = lambda node, step, of: bar.set_postfix_str(f"{node}: step {step}/{of}")
            for job in todo:
                (images,) = self.executor.run(self.graph(job, sampling), "decode")
                save_png(to_pil(images)[0], job.path, {"method": job.method.name, "language": job.prompt.language,
                                                       "id": job.prompt.id, "text": job.text, "seed": job.seed})
                bar.update()
        return len(todo)


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
         images_per_prompt: int, seed: int, out: Path) -> list[Job]:
    """Every image of the run, method by method (so each method's models load once)."""
    return [Job(method, prompt, k, seed + k, prompt_text(method, prompt, translations),
                out / "images" / method.name / prompt.language / f"{prompt.id}_{k}.png")
            for method in methods for prompt in prompts for k in range(images_per_prompt)]


def method_record(method: Method, language_clip: Path | None, translation_model: Path | None) -> dict:
    """What, besides the run's sampling settings, shapes a method's images in one language."""
    record: dict = {"kind": method.kind}
    if method.kind == "pea":
        record.update(adapter=fingerprint(method.adapter), language_clip=fingerprint(language_clip))
    if method.kind == "translate":
        record["translation_model"] = fingerprint(translation_model)
    return record


def run_record(checkpoint: Path, sampling: Sampling, seed: int) -> dict:
    """What shapes every image of the run."""
    return {"checkpoint": fingerprint(checkpoint), "sampling": asdict(sampling), "seed": seed}
