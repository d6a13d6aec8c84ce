"""The distillation trainer on tiny models built from ComfyUI's own UNet, CLIP and VAE classes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from adapters import AdapterShape, PEAAdapter, load_adapter, load_language_encoder
from adapters.tiny import make_chinese_clip

SD15_TAPS = ["input_blocks.3", "input_blocks.6", "input_blocks.9", "input_blocks.11", "middle_block",
             "output_blocks.2", "output_blocks.5", "output_blocks.8", "output_blocks.11"]
SDXL_TAPS = ["input_blocks.3", "input_blocks.6", "input_blocks.8", "middle_block",
             "output_blocks.2", "output_blocks.5", "output_blocks.8"]


def manual_forward(unet, x, timesteps, context, y=None):
    """UNetModel's forward re-done block by block (ComfyUI's own block runner), recording every block output."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import forward_timestep_embed, timestep_embedding

    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels).to(x.dtype))
    if y is not None:
        emb = emb + unet.label_emb(y)
    outs, hs, h = {}, [], x
    for i, block in enumerate(unet.input_blocks):
        h = forward_timestep_embed(block, h, emb, context)
        hs.append(h)
        outs[f"input_blocks.{i}"] = h
    h = forward_timestep_embed(unet.middle_block, h, emb, context)
    outs["middle_block"] = h
    for j, block in enumerate(unet.output_blocks):
        h = torch.cat([h, hs.pop()], dim=1)
        h = forward_timestep_embed(block, h, emb, context, output_shape=hs[-1].shape if hs else None)
        outs[f"output_blocks.{j}"] = h
    outs["output"] = unet.out(h)
    return outs


@pytest.mark.parametrize("shape,names", [("sd15", SD15_TAPS), ("sdxl", SDXL_TAPS)])
def test_taps_read_the_official_blocks(comfy_path, shape, names):
    from training.taps import FeatureTaps
    from training.tiny_base import tiny_unet_model

    base = tiny_unet_model(shape)
    unet = base.diffusion_model
    taps = FeatureTaps(unet)
    assert taps.names == names
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 700.0])
    ctx = torch.randn(2, 7, 64)
    y = torch.randn(2, 2816) if shape == "sdxl" else None
    with torch.no_grad(), taps.capture() as feats:
        unet(x, t, context=ctx, y=y)
    taps.check(feats, 16, 16)
    with torch.no_grad():
        ref = manual_forward(unet, x, t, ctx, y)
    for name in names + ["output"]:
        assert torch.allclose(feats[name], ref[name], atol=1e-5), name


@pytest.fixture(scope="module")
def world(tmp_path_factory, comfy_path):
    """The demo world: a manifest of rendered pairs, a tiny student encoder, tiny SD1.5 parts."""
    from training.demo_world import read_pairs, write_dataset
    from training.tiny_base import tiny_sd15_parts

    root = tmp_path_factory.mktemp("world")
    pairs = [p for p in read_pairs() if not p["held_out"]][:96]
    manifest = write_dataset(root / "data", pairs)
    encoder_dir = make_chinese_clip(root / "chinese-clip-tiny", extra_text=[p["zh"] for p in read_pairs()])
    return {"root": root, "manifest": manifest, "encoder_dir": encoder_dir, "parts": tiny_sd15_parts("demo")}


def make_trainer(world, out: Path, **overrides):
    from training.data import read_manifest
    from training.demo import demo_config
    from training.trainer import Trainer

    cfg = replace(demo_config(out, overrides.pop("steps", 4), 0), batch_size=8, progress=False,
                  cache_dir=None, memory_cache=True, **overrides)
    encoder = load_language_encoder(world["encoder_dir"])
    return Trainer(cfg, world["parts"], encoder, read_manifest(world["manifest"]))


def test_kd_loss_equals_independent_computation(world, tmp_path):
    from training.distill import sample_generator

    trainer = make_trainer(world, tmp_path, cfg_dropout=0.0)
    batch = trainer.make_batch((64, 64), trainer.records[:8], list(range(8)))
    batch.kd_mask[5] = 0.0  # one native sample: SD loss only
    loss, parts = trainer.distiller(batch, step=3)

    base, unet = trainer.base, trainer.base.diffusion_model
    ms = base.model_sampling
    gens = [sample_generator(0, 3, i) for i in batch.sample_ids]
    t = torch.cat([torch.randint(0, 1000, (1,), generator=g) for g in gens])
    noise = torch.stack([torch.randn(batch.latents.shape[1:], generator=g) for g in gens])
    sigma = ms.sigma(t.float())
    noisy = batch.latents + noise * sigma[:, None, None, None]            # EPS noising
    x_in = noisy / (sigma[:, None, None, None] ** 2 + 1) ** 0.5
    with torch.no_grad():
        teacher = manual_forward(unet, x_in, t.float(), batch.teacher_tokens)
        student = manual_forward(unet, x_in, t.float(), trainer.adapter(trainer.encoder(batch.ids))[0])
    mse = lambda a, b: ((a - b) ** 2).mean(dim=(1, 2, 3))  # noqa: E731
    l_sd = mse(student["output"], noise)
    l_lkd = mse(student["output"], teacher["output"])
    l_fkd = sum(mse(student[n], teacher[n]) for n in trainer.distiller.taps.names)
    expected = (l_sd + batch.kd_mask * (1.0 * l_lkd + 0.1 * l_fkd)).mean()
    assert torch.allclose(loss, expected, rtol=1e-4), (loss.item(), expected.item())
    assert torch.allclose(parts["lkd"], l_lkd, rtol=1e-4) and torch.allclose(parts["fkd"], l_fkd, rtol=1e-4)


def test_only_adapter_parameters_receive_gradients(world, tmp_path):
    trainer = make_trainer(world, tmp_path)
    batch = trainer.make_batch((64, 64), trainer.records[:8], list(range(8)))
    loss, _ = trainer.distiller(batch, step=0)
    loss.backward()
    adapter_params = {id(p) for p in trainer.adapter.parameters()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.adapter.parameters())
    others = [n for n, p in list(trainer.base.named_parameters()) + list(trainer.encoder.named_parameters())
              + list(world["parts"].vae.first_stage_model.named_parameters())
              if id(p) not in adapter_params and (p.requires_grad or p.grad is not None)]
    assert others == []


def test_interrupted_and_resumed_run_reproduces_losses(world, tmp_path):
    full = make_trainer(world, tmp_path / "full", steps=6, save_every=3, log_every=1)
    full.run()
    first = make_trainer(world, tmp_path / "cut", steps=3, save_every=3, log_every=1)
    first.run()
    resumed = make_trainer(world, tmp_path / "cut", steps=6, save_every=3, log_every=1, resume=tmp_path / "cut")
    resumed.run()
    losses = lambda d: [(e["step"], e["loss"]) for e in map(json.loads, (d / "log.jsonl").read_text().splitlines())]  # noqa: E731
    full_log, cut_log = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert [s for s, _ in cut_log] == [1, 2, 3, 4, 5, 6]
    for (s1, l1), (s2, l2) in zip(full_log, cut_log):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-6)
    a, b = (load_adapter(d / "pea_demo_zh.safetensors") for d in (tmp_path / "full", tmp_path / "cut"))
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-6)


def test_corrupt_and_missing_images_are_skipped_and_counted(world, tmp_path):
    from training.data import read_manifest
    from training.trainer import Trainer

    lines = world["manifest"].read_text(encoding="utf-8").splitlines()[:24]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    broken = json.dumps({"image": "images/broken.png", "text": "坏的", "en": "broken"}, ensure_ascii=False)
    missing = json.dumps({"image": "images/missing.png", "text": "没有", "en": "missing"}, ensure_ascii=False)
    root = world["manifest"].parent
    manifest = tmp_path / "m.jsonl"
    fixed = [json.dumps({**json.loads(l), "image": str(root / json.loads(l)["image"])}, ensure_ascii=False) for l in lines]
    manifest.write_text("\n".join(fixed + [broken, missing]) + "\n", encoding="utf-8")
    trainer = make_trainer(world, tmp_path / "out", steps=2)
    trainer = Trainer(trainer.cfg, world["parts"], trainer.encoder, read_manifest(manifest))
    assert trainer.skipped.count == 2 and len(trainer.records) == 24
    trainer.run()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped_images"] == 2 and any("broken.png" in e for e in summary["skipped_examples"])


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(world, tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")]))
    runs = {}
    for nproc, batch in ((1, 8), (2, 4)):
        out = tmp_path / f"p{nproc}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(worker),
               str(world["manifest"]), str(world["encoder_dir"]), str(out), str(batch)]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[nproc] = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert len(runs[1]) == len(runs[2]) == 4
    for one, two in zip(runs[1], runs[2]):
        assert one["samples"] == two["samples"] == 8
        assert one["loss"] == pytest.approx(two["loss"], rel=1e-4)
    a, b = (load_adapter(tmp_path / f"p{n}" / "pea_demo_zh.safetensors") for n in (1, 2))
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-5), k


@pytest.mark.slow
def test_demo_learns_the_language_mapping(comfy_path, tmp_path):
    from training.demo import run_demo

    results = run_demo(tmp_path, progress=False)
    assert results["ratio"] <= 0.8
    assert (tmp_path / "matched" / "pea_demo_zh.safetensors").is_file()
    assert (tmp_path / "matched" / "loss.png").stat().st_size > 0
    assert (tmp_path / "matched" / "previews" / "final.png").stat().st_size > 0
    adapter = load_adapter(tmp_path / "matched" / "pea_demo_zh.safetensors")
    assert adapter.info.encoder.kind == "chinese_clip" and adapter.info.training["steps"] > 0


def test_webdataset_shards_train_and_count_bad_samples(world, tmp_path):
    import webdataset as wds

    from training.trainer import Trainer

    lines = [json.loads(l) for l in world["manifest"].read_text(encoding="utf-8").splitlines()[:32]]
    root = world["manifest"].parent
    urls = []
    for shard in range(2):
        url = str(tmp_path / f"train-{shard:03d}.tar")
        with wds.TarWriter(url) as sink:
            for n, item in enumerate(lines[shard::2]):
                sink.write({"__key__": f"s{shard}_{n:04d}", "png": (root / item["image"]).read_bytes(),
                            "json": json.dumps({"text": item["text"], "en": item["en"]}).encode()})
            sink.write({"__key__": f"s{shard}_broken", "png": b"not an image", "json": b'{"text": "x", "en": "x"}'})
        urls.append(url)
    base = make_trainer(world, tmp_path / "out", steps=3, log_every=1)
    trainer = Trainer(base.cfg, world["parts"], base.encoder, shards=urls)
    trainer.run()
    assert trainer.skipped.count >= 1
    assert [json.loads(l)["samples"] for l in (tmp_path / "out" / "log.jsonl").read_text().splitlines()] == [8, 8, 8]
    assert load_adapter(tmp_path / "out" / "pea_demo_zh.safetensors").shape.head == "sd15"


def test_v_prediction_target_is_v(comfy_path):
    from training.objective import prediction_target
    from training.tiny_base import tiny_unet_model

    ms = tiny_unet_model("demo", v_prediction=True).model_sampling
    z0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sigma = ms.sigma(torch.tensor([5.0, 400.0, 990.0]))
    noisy = ms.noise_scaling(sigma, eps, z0)
    s = sigma[:, None, None, None]
    v = (eps - s * z0) / (s ** 2 + 1) ** 0.5   # alpha_t * eps - sigma_t * z0 in DDPM terms
    assert torch.allclose(prediction_target(ms, sigma, noisy, z0), v, atol=1e-4)


def test_cli_refuses_a_checkpoint_without_text_encoder(comfy_path, base_dir, tmp_path):
    cmd = [sys.executable, str(Path(__file__).resolve().parents[2] / "training" / "train_adapter.py"),
           "--checkpoint", str(base_dir / "models" / "checkpoints" / "sd15_standin.safetensors"),
           "--encoder", str(base_dir / "models" / "language_clip" / "chinese-clip-tiny"),
           "--manifest", str(tmp_path / "m.jsonl"), "--cpu", "--output", str(tmp_path / "out")]
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "text": "猫", "en": "cat"}\n')
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, COMFYUI_PATH=str(comfy_path)))
    assert result.returncode != 0
    assert "has no text encoder; the teacher needs the checkpoint's own CLIP" in result.stderr


def test_benchmark_cpu_configuration_prints_ratios(comfy_path, tmp_path, capsys):
    from training.benchmark import main

    assert main(["--steps", "2", "--warmup", "2", "--batch", "2", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "official" in out and "ours" in out and "ratio" in out
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["speed_ratio"] > 0 and result["memory_ratio"] > 0 and result["ours"]["tflop_per_step"] > 0
