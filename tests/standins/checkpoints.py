"""Stand-in model files ComfyUI loads as the real ones: checkpoints (SD1.5, SDXL), FLUX.1
diffusion models and VAE, a ControlNet, a LoRA, and input images; real model classes at tiny
sizes, weights initialised, saved in the real formats. Need ComfyUI importable."""
from __future__ import annotations

from pathlib import Path

import torch


def write_checkpoint(path: Path, family: str, with_clip: bool = False, in_channels: int = 4) -> Path:
    """A stand-in checkpoint ComfyUI detects as SD1.5 or SDXL-family (KOALA layout): real UNet
    classes at one res block per level, a TAESD VAE, and no text encoder (PEA replaces it)
    unless ``with_clip`` (SD1.5: a full-size CLIP-L with random weights, for English branches; its
    UNet's norms at one, so that its images follow the prompt)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    import safetensors.torch

    from training.miniworld.tiny_base import pooling_taesd

    common = dict(image_size=32, in_channels=in_channels, model_channels=320, out_channels=4, dtype=torch.float32,
                  operations=comfy.ops.disable_weight_init, use_spatial_transformer=True, legacy=False,
                  transformer_depth_middle=1)
    if family == "sd15":
        cfg = dict(num_res_blocks=1, channel_mult=(1,), num_heads=8, transformer_depth=[1],
                   transformer_depth_output=[1, 1], context_dim=768)
    else:
        cfg = dict(num_res_blocks=[1, 1, 1], channel_mult=(1, 1, 1), num_head_channels=64,
                   transformer_depth=[0, 2, 5], transformer_depth_output=[0, 0, 1, 1, 1, 1],
                   context_dim=2048, use_linear_in_transformer=True, adm_in_channels=2816,
                   num_classes="sequential")
    gen = torch.Generator().manual_seed(0)
    unet = UNetModel(**common, **cfg)
    norms = {f"{name}.weight" for name, m in unet.named_modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))}
    sd = {}
    for k, v in unet.state_dict().items():
        unit = with_clip and k in norms  # zero norms (the final one) make the noise prediction zero, whatever the prompt
        sd[f"model.diffusion_model.{k}"] = (torch.randn(v.shape, generator=gen) * 0.02 if v.ndim > 1
                                            else torch.ones(v.shape) if unit else torch.zeros(v.shape))
    sd.update({f"first_stage_model.{k}": v for k, v in pooling_taesd().state_dict().items()})
    if with_clip:
        import comfy.sd
        import comfy.supported_models as sm

        from training.miniworld.tiny_base import init_weights

        clip = comfy.sd.CLIP(sm.SD15({}).clip_target())
        init_weights(clip.cond_stage_model, 1)
        sd.update({f"cond_stage_model.{k.removeprefix('clip_l.')}": v
                   for k, v in clip.cond_stage_model.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in sd.items()}, str(path))
    return path


FLUX1 = dict(hidden=3072, mlp=12288, heads=24, context=4096, pooled=768, patch_channels=64, freq=256)
"""FLUX.1's widths as its files store them. ComfyUI's detection (``model_detection.detect_unet_config``)
reads every width from the tensor shapes and fixes all but the block counts, so a stand-in can
only be shallow, never narrow."""


def flux1_shapes(double_blocks: int, guidance: bool) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a FLUX.1 transformer file (Black Forest Labs' layout, what "Load
    Diffusion Model" reads) with ``double_blocks`` double-stream blocks and no single-stream
    block. The file format, not a ComfyUI class, so it holds for every release; the test
    ``test_flux_stand_in_is_detected_as_flux_by_comfyui`` checks the release's detection on it."""
    h, w = FLUX1["hidden"], FLUX1
    shapes = {"img_in.weight": (h, w["patch_channels"]), "img_in.bias": (h,),
              "txt_in.weight": (h, w["context"]), "txt_in.bias": (h,),
              "final_layer.linear.weight": (w["patch_channels"], h), "final_layer.linear.bias": (w["patch_channels"],),
              "final_layer.adaLN_modulation.1.weight": (2 * h, h), "final_layer.adaLN_modulation.1.bias": (2 * h,)}
    embedders = {"time_in": w["freq"], "vector_in": w["pooled"], **({"guidance_in": w["freq"]} if guidance else {})}
    for name, width in embedders.items():
        shapes.update({f"{name}.in_layer.weight": (h, width), f"{name}.in_layer.bias": (h,),
                       f"{name}.out_layer.weight": (h, h), f"{name}.out_layer.bias": (h,)})
    for i in range(double_blocks):
        for stream in ("img", "txt"):
            block = f"double_blocks.{i}.{stream}"
            shapes.update({f"{block}_mod.lin.weight": (6 * h, h), f"{block}_mod.lin.bias": (6 * h,),
                           f"{block}_attn.qkv.weight": (3 * h, h), f"{block}_attn.qkv.bias": (3 * h,),
                           f"{block}_attn.norm.query_norm.scale": (h // w["heads"],),
                           f"{block}_attn.norm.key_norm.scale": (h // w["heads"],),
                           f"{block}_attn.proj.weight": (h, h), f"{block}_attn.proj.bias": (h,),
                           f"{block}_mlp.0.weight": (w["mlp"], h), f"{block}_mlp.0.bias": (w["mlp"],),
                           f"{block}_mlp.2.weight": (h, w["mlp"]), f"{block}_mlp.2.bias": (h,)})
    return shapes


def write_flux_pair(dev_path: Path, schnell_path: Path) -> tuple[Path, Path]:
    """FLUX.1-dev and -schnell stand-ins ("Load Diffusion Model" files) at full width with one
    double-stream block and no single-stream block (the fewest ComfyUI's detection accepts), same
    weights in both; dev has the ``guidance_in`` embedder, which is what tells ComfyUI the two
    apart. Weights are deterministic and stored as float8_e4m3fn (as the community fp8 FLUX files
    are): about 400 MB each instead of 800 MB in bf16."""
    import safetensors.torch

    gen, sd = torch.Generator().manual_seed(0), {}
    for k, shape in flux1_shapes(double_blocks=1, guidance=True).items():
        if k.endswith(".scale"):  # RMSNorm of queries and keys
            t = torch.ones(shape)
        else:
            t = torch.randn(shape, generator=gen).mul_(0.02 if len(shape) > 1 else 0.01)
        sd[k] = t.to(torch.float8_e4m3fn)
    for path in (dev_path, schnell_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd, str(dev_path))
    safetensors.torch.save_file({k: v for k, v in sd.items() if not k.startswith("guidance_in.")}, str(schnell_path))
    return dev_path, schnell_path


def write_flux_vae(path: Path) -> Path:
    """A 16-channel VAE for FLUX latents that "Load VAE" takes from models/vae: ComfyUI's TAESD
    at 16 latent channels (what it builds for its own ``taef1`` choice, with taef1's latent
    scale and shift), weights set by hand so decoded images show the latents' first 3 channels."""
    import safetensors.torch

    from training.miniworld.tiny_base import pooling_taesd

    sd = dict(pooling_taesd(latent_channels=16).state_dict())
    sd.update(vae_scale=torch.tensor(0.3611), vae_shift=torch.tensor(0.1159))
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in sd.items()}, str(path))
    return path


def write_controlnet(path: Path, checkpoint: Path) -> Path:
    """A ControlNet (ldm layout) for a checkpoint's UNet, built with ComfyUI's own ControlNet class."""
    import comfy.cldm.cldm
    import comfy.model_detection
    import comfy.ops
    import safetensors.torch

    from training.miniworld.tiny_base import init_weights

    config = dict(comfy.model_detection.model_config_from_unet(
        safetensors.torch.load_file(str(checkpoint)), "model.diffusion_model.").unet_config)
    config.pop("out_channels")
    net = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, operations=comfy.ops.disable_weight_init,
                                     dtype=torch.float32, device="cpu")
    init_weights(net, 3)
    safetensors.torch.save_file({f"control_model.{k}": v.half().contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def write_images(folder: Path) -> None:
    """Inputs for the ControlNet and inpainting workflows (transparent pixels are the mask)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (64, 64), (200, 190, 170))
    ImageDraw.Draw(im).polygon([(8, 56), (32, 8), (56, 56)], outline=(20, 20, 20), width=3)
    im.save(folder / "pea_canny_source.png")
    rgba = im.convert("RGBA")
    ImageDraw.Draw(rgba).rectangle((20, 20, 44, 44), fill=(0, 0, 0, 0))
    rgba.save(folder / "pea_inpaint_source.png")


LORA_TARGETS = (("model.diffusion_model.", ("attn2.to_k.weight", "attn2.to_v.weight"), "lora_unet_", 0.01),
                ("cond_stage_model.transformer.text_model.encoder.layers.", ("self_attn.q_proj.weight", "mlp.fc1.weight"),
                 "lora_te_text_model_encoder_layers_", 0.1))
"""Checkpoint key prefix, key endings, kohya LoRA prefix and scale: the UNet's cross-attention
key/value projections; an SD1.5 text encoder's query projections and first MLP layers."""


def write_lora(path: Path, checkpoint: Path, rank: int = 4) -> Path:
    """A LoRA (kohya key names) on a checkpoint's UNet cross-attention key/value projections and,
    where the checkpoint has an SD1.5 text encoder, on that too (a LoRA for LoraLoader's model and clip)."""
    import safetensors
    import safetensors.torch

    gen, lora = torch.Generator().manual_seed(1), {}
    with safetensors.safe_open(str(checkpoint), framework="pt") as f:
        for key in f.keys():
            for prefix, endings, kohya, scale in LORA_TARGETS:
                if key.startswith(prefix) and key.endswith(endings):
                    out_dim, in_dim = f.get_slice(key).get_shape()
                    name = kohya + key[len(prefix):-len(".weight")].replace(".", "_")
                    lora[f"{name}.lora_down.weight"] = torch.randn(rank, in_dim, generator=gen).half() * scale
                    lora[f"{name}.lora_up.weight"] = torch.randn(out_dim, rank, generator=gen).half() * scale
                    lora[f"{name}.alpha"] = torch.tensor(float(rank)).half()
    safetensors.torch.save_file(lora, str(path))
    return path


def write_embeddings(folder: Path, width: int = 768) -> None:
    """Textual-inversion embeddings as ComfyUI's ``load_embed`` reads them: ``EasyNegative.safetensors``
    (the ``emb_params`` layout, 2 vectors), ``pea_style.pt`` (A1111's ``string_to_param``, 3 vectors) and
    ``pea_nan.safetensors`` (a NaN vector)."""
    import safetensors.torch

    gen = torch.Generator().manual_seed(7)
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({"emb_params": torch.randn(2, width, generator=gen) * 0.02},
                                str(folder / "EasyNegative.safetensors"))
    torch.save({"string_to_param": {"*": torch.randn(3, width, generator=gen) * 0.02}}, folder / "pea_style.pt")
    safetensors.torch.save_file({"emb_params": torch.full((1, width), float("nan"))}, str(folder / "pea_nan.safetensors"))
