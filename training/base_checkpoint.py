"""The base checkpoint an adapter is distilled from: its parts, its family, an adapter sized for it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from adapters import AdapterShape, LanguageEncoder, PEAAdapter, PEAError
from adapters.families import FAMILIES, Family, UnsupportedModelError, family_of, model_label


class CheckpointError(PEAError):
    """The base checkpoint cannot be found, loaded, or taught from."""


@dataclass
class BaseParts:
    """What a checkpoint loader gives: MODEL (ModelPatcher), CLIP, VAE, and the file's name."""

    model: object
    clip: object
    vae: object
    name: str


def trainable_family(model, name: str) -> Family:
    """The family of ``model`` (a ModelPatcher or BaseModel); UnsupportedModelError naming what
    the trainer supports when it cannot distil adapters for it."""
    family = family_of(model)
    if not family.trainable:
        supported = " and ".join(f.label for f in FAMILIES.values() if f.trainable)
        raise UnsupportedModelError(
            f"{name} is a {family.label} model ({model_label(model)}); the trainer distils adapters for "
            f"{supported} checkpoints. {family.label} adapters load in Apply PEA Adapter but cannot be trained here.")
    return family


def unet_weight_dtype() -> torch.dtype:
    """bf16 UNet weights where the device computes in bf16, fp32 elsewhere: the training step runs
    the UNet in its weight dtype without autocast (fp16 would need loss scaling)."""
    import comfy.model_management as mm

    return torch.bfloat16 if mm.should_use_bf16(mm.get_torch_device()) else torch.float32


def load_base(name: str) -> BaseParts:
    """MODEL/CLIP/VAE through ComfyUI's own checkpoint loader, the UNet in its training dtype
    (``unet_weight_dtype``); ``name`` is a path or a name under models/checkpoints. Refuses
    families the trainer does not support."""
    import comfy.sd
    import folder_paths

    path = Path(name) if Path(name).is_file() else folder_paths.get_full_path("checkpoints", name)
    if path is None:
        searched = ", ".join(folder_paths.get_folder_paths("checkpoints"))
        raise CheckpointError(f"checkpoint '{name}' not found (a path, or a name under: {searched})")
    try:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(path), output_vae=True, output_clip=True,
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
            model_options={"dtype": unet_weight_dtype()})
    except RuntimeError as e:
        raise CheckpointError(f"ComfyUI cannot load {path} as a checkpoint: {e}") from e
    trainable_family(model, str(path))
    if clip is None:
        raise CheckpointError(f"{path} has no text encoder; the teacher needs the checkpoint's own CLIP")
    return BaseParts(model, clip, vae, Path(path).name)


def new_adapter(family: Family, encoder: LanguageEncoder, hidden: tuple[int, ...] | None) -> PEAAdapter:
    """An adapter sized for the base family (token and pooled widths) and the encoder (input)."""
    return PEAAdapter(AdapterShape.for_family(family, encoder.hidden_size, hidden))
