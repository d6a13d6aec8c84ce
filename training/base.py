"""The base checkpoint an adapter is distilled from: its parts, its family, an adapter sized for it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters import AdapterShape, LanguageEncoder, PEAAdapter


@dataclass
class BaseParts:
    """What a checkpoint loader gives: MODEL (ModelPatcher), CLIP, VAE, and the file's name."""

    model: object
    clip: object
    vae: object
    name: str


def load_base(name: str) -> BaseParts:
    """MODEL/CLIP/VAE through ComfyUI's own checkpoint loader; ``name`` is a path or a name
    under models/checkpoints."""
    import comfy.sd
    import folder_paths

    path = Path(name) if Path(name).is_file() else folder_paths.get_full_path("checkpoints", name)
    if path is None:
        searched = ", ".join(folder_paths.get_folder_paths("checkpoints"))
        raise SystemExit(f"error: checkpoint '{name}' not found (a path, or a name under: {searched})")
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(path), output_vae=True, output_clip=True,
        embedding_directory=folder_paths.get_folder_paths("embeddings"))
    if clip is None:
        raise SystemExit(f"error: {path} has no text encoder; the teacher needs the checkpoint's own CLIP")
    return BaseParts(model, clip, vae, Path(path).name)


def base_family(base_model) -> tuple[str, int, int | None]:
    """("sd15"|"sdxl", context width, pooled width or None) of a ComfyUI BaseModel."""
    import comfy.model_base

    context = base_model.model_config.unet_config["context_dim"]
    if isinstance(base_model, comfy.model_base.SDXL):
        return "sdxl", context, 1280
    return "sd15", context, None


def new_adapter(base_model, encoder: LanguageEncoder, hidden: tuple[int, ...] | None) -> PEAAdapter:
    """An adapter sized for the base family (token and pooled widths) and the encoder (input)."""
    head, context, pooled = base_family(base_model)
    hidden = hidden or ((1024, 1024) if head == "sdxl" else (2048, 2048))
    out_dim = pooled if head == "sdxl" else context
    return PEAAdapter(AdapterShape(head, encoder.hidden_size, tuple(hidden), out_dim, context, pooled))
