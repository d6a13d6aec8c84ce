"""Finding, importing and serving a real ComfyUI for the host tests (never a mock)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from comfy_runtime import PACK_ROOT, load_pack  # noqa: F401  (load_pack: used by the fixtures)

REPO = PACK_ROOT


def call_node(node_class, **inputs) -> tuple:
    """Run a stock node class outside a graph, on whichever node API the release gives it:
    V3 nodes (``comfy_api`` ``io.ComfyNode``, from 0.3.4x on for many core nodes) through their
    classmethod ``execute``, V1 nodes through the method their ``FUNCTION`` names. The outputs,
    as a tuple."""
    if hasattr(node_class, "define_schema"):  # V3
        return tuple(node_class.execute(**inputs).args)
    out = getattr(node_class(), node_class.FUNCTION)(**inputs)
    return tuple(out["result"] if isinstance(out, dict) else out)


def write_checkpoint(path: Path, family: str, with_clip: bool = False, in_channels: int = 4) -> Path:
    """A stand-in checkpoint ComfyUI detects as SD1.5 or SDXL-family (KOALA layout): real UNet
    classes at one res block per level, a TAESD VAE, and no text encoder (PEA replaces it)
    unless ``with_clip`` (SD1.5: a full-size CLIP-L with random weights, for English branches)."""
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
    sd = {}
    for k, v in unet.state_dict().items():
        sd[f"model.diffusion_model.{k}"] = torch.randn(v.shape, generator=gen) * 0.02 if v.ndim > 1 else torch.zeros(v.shape)
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


def write_lora(path: Path, checkpoint: Path, rank: int = 4) -> Path:
    """A LoRA (kohya key names) on the cross-attention key/value projections of a checkpoint's UNet."""
    import safetensors
    import safetensors.torch

    gen, lora = torch.Generator().manual_seed(1), {}
    with safetensors.safe_open(str(checkpoint), framework="pt") as f:
        for key in f.keys():
            if key.startswith("model.diffusion_model.") and key.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
                out_dim, in_dim = f.get_slice(key).get_shape()
                name = "lora_unet_" + key[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
                lora[f"{name}.lora_down.weight"] = torch.randn(rank, in_dim, generator=gen).half() * 0.01
                lora[f"{name}.lora_up.weight"] = torch.randn(out_dim, rank, generator=gen).half() * 0.01
                lora[f"{name}.alpha"] = torch.tensor(float(rank)).half()
    safetensors.torch.save_file(lora, str(path))
    return path


def open_app(browser, url: str, viewport: tuple[int, int] = (2400, 1400)):
    """A browser page with ComfyUI's frontend loaded and its graph ready (a first-run dialog closed)."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_function("window.app && window.app.graph", timeout=120_000)
    page.wait_for_timeout(1000)
    page.keyboard.press("Escape")  # a first-run templates dialog, if any
    return page


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A real ComfyUI server on loopback, started once per test session."""

    def __init__(self, comfy_path: Path, base_dir: Path, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_dir = base_dir
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(base_dir), "--disable-auto-launch", "--dont-print-server",
             "--extra-model-paths-config", str(base_dir / "extra_model_paths.yaml")],
            cwd=comfy_path, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; see {self.log.name}")
            try:
                self.get("/object_info/KSampler")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s; see {self.log.name}")

    def alive(self) -> bool:
        return self.proc.poll() is None and "KSampler" in self.get("/object_info/KSampler")

    def get(self, route: str):
        return json.loads(self.get_text(route))

    def get_text(self, route: str) -> str:
        with urllib.request.urlopen(self.url + route, timeout=30) as r:
            return r.read().decode("utf-8")

    def set_setting(self, setting: str, value) -> None:
        """A frontend setting (ComfyUI stores them per user on the server; pages read them when they load)."""
        req = urllib.request.Request(f"{self.url}/settings/{setting}", data=json.dumps(value).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200, r.status

    def queue(self, graph: dict) -> tuple[int, dict]:
        """POST /prompt; (HTTP status, JSON body)."""
        data = json.dumps({"prompt": graph, "client_id": "pea-tests"}).encode()
        req = urllib.request.Request(self.url + "/prompt", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def run(self, graph: dict, timeout: float = 300) -> dict:
        """Queue a graph and wait for its history entry (status and outputs)."""
        status, body = self.queue(graph)
        if status != 200:
            raise AssertionError(f"prompt refused ({status}): {body}")
        prompt_id = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
