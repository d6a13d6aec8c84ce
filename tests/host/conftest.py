"""Host fixtures: a real ComfyUI (in-process and as a server) with stand-in model files.

Everything here skips, with the reason, when no ComfyUI is found (see comfy_host.find_comfyui).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from adapters import EncoderSpec, load_language_encoder
from adapters.convert import main as convert_adapter
from adapters.encoders.extract import extract_encoder
from adapters.encoders.single_file import pack_encoder
from tests.standins import encoders as standins
from tests import broken_files
from tests.host import comfy_host, releases
from tests.standins import checkpoints
from comfy_runtime import find_comfyui, import_comfy

ZH = EncoderSpec("chinese_clip", "chinese-clip-tiny", context_length=52, attention_mask=True)
XLMR = EncoderSpec("open_clip", "xlm-roberta-tiny", context_length=77, attention_mask=True)


@pytest.fixture(scope="session")
def comfy_path():
    path, why = find_comfyui()
    if path is None:
        pytest.skip(why)
    import_comfy(cpu=True)
    return path


SHARED = ("models", "extra_models", "downloads")
"""What a sub-run links from the base directory named by releases.STANDINS_ENV."""


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, comfy_path):
    """A ComfyUI --base-directory: models, custom_nodes (the pack linked in), output."""
    base = tmp_path_factory.mktemp("comfy_base")
    shared = os.environ.get(releases.STANDINS_ENV)
    if shared:
        for name in SHARED:
            os.symlink(Path(shared) / name, base / name)
    else:
        write_stand_ins(base)
    checkpoints.write_images(base / "input")
    (base / "extra_model_paths.yaml").write_text(
        f"pea_extra:\n    base_path: {base / 'extra_models'}\n    language_clip: language_clip\n"
        f"    pea_adapters: pea_adapters\n")
    (base / "custom_nodes").mkdir()
    os.symlink(comfy_host.REPO, base / "custom_nodes" / "ComfyUI-PEA-Diffusion")
    return base


def write_stand_ins(base: Path) -> None:
    """The stand-in model files under ``base``: models/, extra_models/ (for extra_model_paths.yaml)
    and downloads/ (the FLUX sources, as users download them)."""
    models = base / "models"
    clips, adapters = models / "language_clip", models / "pea_adapters"
    standins.make_chinese_clip(clips / "chinese-clip-tiny")
    standins.make_open_clip(clips / "laion" / "xlm-roberta-tiny")
    (clips / "empty").mkdir()
    pack_encoder(load_language_encoder(clips / "chinese-clip-tiny"), clips / "chinese-clip-tiny-text.safetensors")
    standins.make_adapter(adapters / "pea_zh_sd15.safetensors", "sd15", 32, encoder=ZH)
    standins.make_adapter(adapters / "pea_zh_sdxl.safetensors", "sdxl", 32, encoder=ZH, seed=1)
    standins.make_adapter(adapters / "pea_xlmr_sdxl.safetensors", "sdxl", 32, encoder=XLMR, seed=2)
    standins.make_adapter(adapters / "official" / "pytorch_model.bin", "sdxl", 32, official=True, seed=3)
    standins.make_adapter(adapters / "bad" / "wide_sdxl.safetensors", "sdxl", 64, encoder=ZH)
    standins.make_adapter(adapters / "pea_zh_flux.safetensors", "flux", 32, encoder=ZH)
    write_flux_files(base, models)
    good = (adapters / "pea_zh_sdxl.safetensors").read_bytes()
    (adapters / "bad" / "truncated.safetensors").write_bytes(good[: len(good) // 3])
    torch.save([torch.zeros(4)], adapters / "bad" / "not_a_state_dict.bin")
    write_hostile_files(base, clips, adapters)
    checkpoints.write_checkpoint(models / "checkpoints" / "sd15_standin.safetensors", "sd15")
    checkpoints.write_checkpoint(models / "checkpoints" / "sdxl_standin.safetensors", "sdxl")
    checkpoints.write_checkpoint(models / "checkpoints" / "sd15_standin_clip.safetensors", "sd15", with_clip=True)
    checkpoints.write_checkpoint(models / "checkpoints" / "sdxl_standin_inpaint.safetensors", "sdxl", in_channels=9)
    (models / "controlnet").mkdir()
    checkpoints.write_controlnet(models / "controlnet" / "sdxl_standin_controlnet.safetensors",
                                models / "checkpoints" / "sdxl_standin.safetensors")
    (models / "loras").mkdir()
    checkpoints.write_lora(models / "loras" / "sdxl_standin_lora.safetensors", models / "checkpoints" / "sdxl_standin.safetensors")
    checkpoints.write_lora(models / "loras" / "sd15_standin_lora.safetensors",
                          models / "checkpoints" / "sd15_standin_clip.safetensors")
    checkpoints.write_embeddings(models / "embeddings")
    extra = base / "extra_models"
    (extra / "pea_adapters").mkdir(parents=True)
    shutil.copytree(clips / "chinese-clip-tiny", extra / "language_clip" / "extra-chinese-clip")
    shutil.copy(adapters / "pea_zh_sd15.safetensors", extra / "pea_adapters" / "extra_zh_sd15.safetensors")


def write_hostile_files(base: Path, clips: Path, adapters: Path) -> None:
    """A NaN adapter, one whose 1e30 weights overflow when run, a packed language CLIP naming a file
    in custom_nodes/ (where the old loader would have written it, relative to the temp folder), a
    language CLIP whose tokenizer panics, and links the language_clip listing cannot follow."""
    nan = standins.make_adapter(adapters / "bad" / "nan_sdxl.safetensors", "sdxl", 32, encoder=ZH, seed=5)
    broken_files.poison_safetensors(nan, "projector.0.weight", float("nan"))
    huge = standins.make_adapter(adapters / "bad" / "huge_sd15.safetensors", "sd15", 32, encoder=ZH, seed=6)
    broken_files.rewrite_safetensors(huge, lambda _key, t: torch.full_like(t, 1e30))
    target = "../" * len(Path(tempfile.gettempdir()).resolve().parts) + f"{base.resolve()}/custom_nodes/pea_evil.py"[1:]
    broken_files.repack(clips / "chinese-clip-tiny-text.safetensors", clips / "hostile-text.safetensors",
                        broken_files.with_member(target, "raise SystemExit('written by a model file')"))
    broken_files.with_panicking_tokenizer(clips / "chinese-clip-tiny", clips / "panicking-tokenizer")
    for link, target in broken_files.UNREADABLE_LINKS.items():  # the listing must skip these
        (clips / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, clips / link)


def write_flux_files(base: Path, models: Path) -> None:
    """FLUX stand-ins, made the way the README tells users to make theirs: a byT5 checkpoint
    folder whose encoder is extracted to one file, an official-layout FLUX adapter pickle
    converted with the README's flags, a FLUX.1-dev/-schnell pair and a 16-channel VAE."""
    sources = base / "downloads"
    byt5 = standins.make_byt5(sources / "byt5-tiny")
    extract_encoder(byt5, models / "language_clip" / "byt5-tiny-encoder.safetensors")
    official = standins.make_adapter(sources / "MultilingualFLUX.1-adapter" / "diffusion_pytorch_model.bin", "flux",
                                     standins.TINY["hidden"], official=True, seed=4)
    # with the README's flags, and once claiming masked padding (the pairing check refuses it)
    for dest, mask in (("pea_byt5_flux.safetensors", "--no-attention-mask"),
                       ("bad/masked_byt5_flux.safetensors", "--attention-mask")):
        assert convert_adapter([str(official), str(models / "pea_adapters" / dest), "--encoder-kind", "t5",
                                "--encoder-name", "byt5-tiny", "--context-length", "256", mask,
                                "--languages", "zh", "en"]) == 0
    checkpoints.write_flux_pair(models / "diffusion_models" / "flux_dev_standin.safetensors",
                               models / "diffusion_models" / "flux_schnell_standin.safetensors")
    checkpoints.write_flux_vae(models / "vae" / "flux_vae_standin.safetensors")


@pytest.fixture(scope="session")
def pack(base_dir):
    """The pack imported in-process, its folders pointing at the stand-in models."""
    import folder_paths

    for name in ("language_clip", "pea_adapters", "checkpoints", "loras", "embeddings"):
        folder_paths.add_model_folder_path(name, str(base_dir / "models" / name), is_default=True)
    return comfy_host.load_pack()


@pytest.fixture(scope="session")
def server(base_dir, comfy_path, tmp_path_factory):
    srv = comfy_host.ComfyServer(comfy_path, base_dir, tmp_path_factory.mktemp("logs") / "comfyui.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by the playwright library (no browser download)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (README, 'Run it': apt-get install chromium fonts-wqy-microhei)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python library is not installed (pip install -r requirements-dev.txt)")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


@pytest.fixture(scope="session", autouse=True)
def release_runs(request) -> dict[str, releases.SubRun]:
    """The background runs of a full session (one that collected tests/host/test_releases.py): the
    other releases' sub-runs and, when this session handed them over, the slow and the pack-logic
    tiers on its own release (releases.BACKGROUND_TIERS, a process each). They start at the first
    host test (those that read stand-in model files once this session's are written), run beside
    its own tests (each process waits on its ComfyUI server much of the time), and are stopped at
    the session's end."""
    config = request.config
    if not getattr(config, "pea_release_runs_wanted", False):
        yield {}
        return
    # The test processes share the machine's cores from here on: one torch thread each, this process
    # and what it starts (its ComfyUI server, commands) too. A server with a thread per core spun in
    # OpenMP's barriers whenever another process held a core: twice the CPU, four times the wall time.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    tiers = releases.BACKGROUND_TIERS if config.pea_tiers_in_background else {}
    runs = {name: releases.SubRun(config.pea_release, None, tier, name)
            for name, tier in tiers.items() if not tier.stand_ins}
    stand_ins = request.getfixturevalue("base_dir")
    runs.update({r.version: releases.SubRun(r, stand_ins) for r in releases.other_releases(config.pea_release)})
    runs.update({name: releases.SubRun(config.pea_release, stand_ins, tier, name)
                 for name, tier in tiers.items() if tier.stand_ins})
    yield runs
    for run in runs.values():
        run.stop()


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    """The background runs' tests (test_releases.py) last, after this process's own host tests. In a
    full session the slow and the pack-logic ('once') tiers leave this process for background runs
    on the same release (releases.BACKGROUND_TIERS), so that they run beside the other tests instead
    of after them."""
    items.sort(key=lambda item: item.path.name == "test_releases.py")
    config.pea_release_runs_wanted = (releases.SUBRUN_ENV not in os.environ and config.pea_release is not None
                                      and any(item.path.name == "test_releases.py" for item in items))
    tiered = [item for item in items if item.path.name != "test_releases.py"
              and (item.get_closest_marker(releases.SLOW_TIER) or item.get_closest_marker(releases.ONCE_TIER))]
    config.pea_tiers_in_background = bool(config.pea_release_runs_wanted and tiered)
    if config.pea_tiers_in_background:
        config.hook.pytest_deselected(items=tiered)
        items[:] = [item for item in items if item not in tiered]
