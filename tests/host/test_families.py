"""``adapters.families.family_of`` on models ComfyUI itself detects and builds (weights on the meta
device: only their configuration is read)."""
from __future__ import annotations

import pytest
import torch

from adapters.families import FAMILIES, UnsupportedModelError, family_of

FLUX1 = dict(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0,
             num_heads=24, axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True)


def flux_keys(variant: str) -> dict[str, torch.Tensor]:
    """The state-dict keys and shapes of a FLUX-layout file, as ComfyUI's detection reads them:
    FLUX.1-dev/-schnell, or a relative that ComfyUI derives from its FLUX classes."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux, FluxParams

    extra = {"txt_ids_dims": []} if "txt_ids_dims" in FluxParams.__dataclass_fields__ else {}
    with torch.device("meta"):
        sd = dict(Flux(**FLUX1, **extra, depth=1, depth_single_blocks=0, guidance_embed=True,
                       operations=comfy.ops.disable_weight_init).state_dict())
    if variant != "flux1-dev":
        sd = {k: v for k, v in sd.items() if not k.startswith("guidance_in.")}
    if variant == "longcat-image":  # Qwen2.5-VL text states (3584-d), no pooled vector
        sd = {k: v for k, v in sd.items() if not k.startswith("vector_in.")}
        sd["txt_in.weight"] = torch.empty(3072, 3584, device="meta")
    if variant == "chroma":  # modulation from a distilled guidance layer, no pooled vector
        sd = {k: v for k, v in sd.items() if not k.startswith("vector_in.")}
        sd["distilled_guidance_layer.norms.0.scale"] = torch.empty(5120, device="meta")
    if variant == "flux2":
        sd["double_stream_modulation_img.lin.weight"] = torch.empty(6 * 3072, 3072, device="meta")
    return sd


def detected_model(variant: str):
    """The BaseModel ComfyUI builds for the file, or a skip where this release cannot build one."""
    import comfy.model_detection

    sd = flux_keys(variant)
    config = comfy.model_detection.model_config_from_unet(sd, "")
    try:
        return config.get_model(sd, "", device=torch.device("meta"))
    except TypeError as e:
        pytest.skip(f"this ComfyUI cannot build a {variant} model ({e})")


@pytest.mark.parametrize("variant,config", [("flux1-dev", "Flux"), ("flux1-schnell", "FluxSchnell")])
def test_flux1_is_flux1(comfy_path, variant, config):
    model = detected_model(variant)
    assert type(model.model_config).__name__ == config
    assert family_of(model) == FAMILIES["flux"]


@pytest.mark.parametrize("variant", ["longcat-image", "chroma", "flux2"])
def test_flux_relatives_are_refused_by_name(comfy_path, variant):
    import comfy.model_base
    import comfy.supported_models as sm

    if variant == "flux2" and not hasattr(sm, "Flux2"):
        pytest.skip("this ComfyUI has no Flux2")
    model = detected_model(variant)
    assert isinstance(model, comfy.model_base.Flux)  # the class alone would take it for FLUX.1
    with pytest.raises(UnsupportedModelError, match=r"supported: SD1.5 \(SD15.*SDXL \(SDXL.*FLUX.1 \(Flux, FluxSchnell"):
        family_of(model)


@pytest.mark.parametrize("shape,head,widths", [("sd15", "sd15", (64, None)), ("sdxl", "sdxl", (64, 1280)),
                                               ("demo_xl", "sdxl", (96, 64))])
def test_unet_families_keep_the_model_widths(comfy_path, shape, head, widths):
    """A narrow stand-in keeps its context width and (SDXL) the pooled width its label embedding
    reads after the size ids; the rest is the family's."""
    from training.miniworld.tiny_base import tiny_unet_model

    family = family_of(tiny_unet_model(shape))
    assert family.head == head and (family.context_dim, family.pooled_dim) == widths
    assert family.resolution == FAMILIES[head].resolution and family.hidden == FAMILIES[head].hidden
