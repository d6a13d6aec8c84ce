"""The base-model families a PEA adapter conditions, as data, and which family a ComfyUI model is.

Each family fixes the widths of the conditioning its model reads (cross-attention tokens, pooled
text vector), its native resolution, the adapter head that produces that conditioning and the
default hidden widths of a new adapter. ``family_of`` reads a ComfyUI MODEL by duck typing (this
package never imports ComfyUI): the model's ``model_config`` — the class ComfyUI's own detection
picked for the file — and its ``unet_config``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import IncompatibleError


@dataclass(frozen=True)
class Family:
    """One base-model family. ``head`` names the adapter head that conditions it."""

    head: str
    label: str
    context_dim: int
    """Width of the cross-attention (or text-stream) tokens the model reads."""
    pooled_dim: int | None
    """Width of the pooled text vector it reads; None where it reads none."""
    resolution: int
    """Side of the square area it was trained at (pixels)."""
    hidden: tuple[int, ...]
    """Default hidden widths of a new adapter's projector (the published adapters')."""
    comfy_configs: tuple[str, ...]
    """ComfyUI ``supported_models`` classes of this family, by class name."""
    trainable: bool
    """Whether ``training/train_adapter.py`` distils adapters for it."""
    token_keys: tuple[str, ...]
    """The keys of ComfyUI's token dicts for this family's text encode nodes (SDXL's nodes give
    "g" and "l", FLUX's "t5xxl" and "l"); the adapter encodes the first, the others' text is unused."""

    @property
    def trunk_dim(self) -> int:
        """Output width of the projector's last Linear: SDXL's trunk is its pooled vector
        (the head widens it into tokens); SD1.5's and FLUX's trunk is the token context."""
        return self.pooled_dim if self.head == "sdxl" else self.context_dim


FAMILIES: dict[str, Family] = {f.head: f for f in (
    Family("sd15", "SD1.5", 768, None, 512, (2048, 2048),
           ("SD15", "SD15_instructpix2pix"), trainable=True, token_keys=("l",)),
    Family("sdxl", "SDXL", 2048, 1280, 1024, (1024, 1024),
           ("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B", "SDXL_instructpix2pix"), trainable=True,
           token_keys=("g", "l")),
    Family("flux", "FLUX.1", 4096, 768, 1024, (4096, 4096),
           ("Flux", "FluxSchnell", "FluxInpaint"), trainable=False, token_keys=("t5xxl", "l")),
)}
HEADS = tuple(FAMILIES)
SDXL_SIZE_IDS_WIDTH = 6 * 256
"""Width of the size ids in an SDXL label vector (ComfyUI's ``SDXL.encode_adm``: original size, crop,
target size, each number a 256-d timestep embedding), after the pooled text vector."""


class UnsupportedModelError(IncompatibleError):
    """A base model outside every family; the message names it and what is supported."""


def supported_models() -> str:
    """'SD1.5 (SD15, ...), SDXL (...), FLUX.1 (...)': the families and ComfyUI's class names."""
    return ", ".join(f"{f.label} ({', '.join(f.comfy_configs)})" for f in FAMILIES.values())


def _base_model(model):
    """The ``BaseModel`` of a ``ModelPatcher`` (ComfyUI's MODEL), or ``model`` itself."""
    return model if hasattr(model, "model_config") else model.model


def model_label(model) -> str:
    """ComfyUI's names for a MODEL: its model class and the detected config class."""
    base = _base_model(model)
    return f"{type(base).__name__} ({type(base.model_config).__name__})"


def family_of(model) -> Family:
    """The family of a ComfyUI MODEL (``ModelPatcher``) or ``BaseModel``, with the model's own
    widths; raises UnsupportedModelError for any other model.

    The detected config class decides (ComfyUI derives Flux2, Chroma, LongCat-Image and others
    from its FLUX classes, so the model class alone cannot). FLUX.1 must also have FLUX.1's exact
    text widths, which its detection fixes. UNet families keep the model's context width as
    read (SDXL also its pooled width, from the label embedding's input), so that narrow stand-ins
    built from ComfyUI's SD15/SDXL classes train like the real ones.
    """
    config = _base_model(model).model_config
    name, unet = type(config).__name__, config.unet_config
    family = next((f for f in FAMILIES.values() if name in f.comfy_configs), None)
    if family is None:
        raise UnsupportedModelError(
            f"The model {model_label(model)} is not one PEA adapters condition; supported: {supported_models()}.")
    if family.head == "flux":
        widths = (unet.get("image_model"), unet.get("context_in_dim"), unet.get("vec_in_dim"))
        if widths != ("flux", family.context_dim, family.pooled_dim):
            raise UnsupportedModelError(
                f"The model {model_label(model)} reads (image_model, text, pooled) = {widths}, not FLUX.1's "
                f"('flux', {family.context_dim}, {family.pooled_dim}); supported: {supported_models()}.")
        return family
    if family.head == "sdxl" and unet.get("adm_in_channels"):
        return replace(family, context_dim=unet["context_dim"], pooled_dim=unet["adm_in_channels"] - SDXL_SIZE_IDS_WIDTH)
    return replace(family, context_dim=unet["context_dim"])
