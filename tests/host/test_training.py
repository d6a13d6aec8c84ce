"""The distillation trainer on tiny models built from ComfyUI's own UNet, CLIP and VAE classes."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from adapters import load_adapter, load_language_encoder
from adapters.demo_files import make_chinese_clip

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


def hooked_forward(unet, x, timesteps, context, y=None):
    """The taps the way forward hooks read them: on each tapped block's last layer and on the UNet."""
    from training.step.taps import tap_points

    feats = {}
    keep = lambda name: lambda _m, _i, out: feats.__setitem__(name, out)  # noqa: E731
    handles = [module.register_forward_hook(keep(name)) for name, module in tap_points(unet)]
    handles.append(unet.register_forward_hook(keep("output")))
    try:
        unet(x, timesteps, context=context, y=y)
    finally:
        for handle in handles:
            handle.remove()
    return feats


@pytest.mark.parametrize("shape,names", [("sd15", SD15_TAPS), ("sdxl", SDXL_TAPS)])
def test_hook_free_taps_equal_the_hooked_ones(comfy_path, shape, names):
    from training.step.taps import check_features, tap_names
    from training.miniworld.tiny_base import tiny_unet_model
    from training.step.unet_pass import recompute_plan, tapped_forward

    unet = tiny_unet_model(shape).diffusion_model
    assert tap_names(unet) == names
    x, t = torch.randn(2, 4, 16, 24), torch.tensor([10.0, 700.0])
    ctx = torch.randn(2, 7, 64)
    y = torch.randn(2, 2816) if shape == "sdxl" else None
    with torch.no_grad():
        hooked = hooked_forward(unet, x, t, ctx, y)
        ref = manual_forward(unet, x, t, ctx, y)
        for recompute in (frozenset(), recompute_plan(unet, 0.0)):
            out, feats = tapped_forward(unet, x, t, ctx, y, frozenset(names), recompute)
            assert sorted(feats) == sorted(names)
            assert torch.equal(out, hooked["output"])
            for name in names:  # bit for bit
                assert torch.equal(feats[name], hooked[name]), name
    check_features(unet, feats, 16, 24)
    for name in names + ["output"]:
        assert torch.allclose(hooked[name], ref[name], atol=1e-5), name


@pytest.mark.parametrize("budget", [0.5, 0.0])
def test_recomputed_blocks_give_the_same_gradients(comfy_path, budget):
    from training.step.taps import tap_names
    from training.miniworld.tiny_base import tiny_unet_model
    from training.step.unet_pass import recompute_plan, tapped_forward

    unet = tiny_unet_model("sdxl").diffusion_model.requires_grad_(False)
    taps = frozenset(tap_names(unet))
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 700.0]), torch.randn(2, 2816)
    ctx = torch.randn(2, 7, 64)
    plan = recompute_plan(unet, budget)
    assert plan
    grads = []
    for recompute in (frozenset(), plan):
        c, label = ctx.clone().requires_grad_(), y.clone().requires_grad_()
        out, feats = tapped_forward(unet, x, t, c, label, taps, recompute)
        (out.square().mean() + sum(f.square().mean() for f in feats.values())).backward()
        grads.append((c.grad, label.grad))
    for eager, recomputed in zip(*grads):
        assert torch.equal(eager, recomputed)


@pytest.mark.once
def test_recompute_plan_takes_the_narrowest_attention_blocks_first(comfy_path):
    from training.miniworld.tiny_base import tiny_unet_model
    from training.step.unet_pass import named_blocks, recompute_plan, transformer_width

    unet = tiny_unet_model("sdxl").diffusion_model
    width = {name: transformer_width(block) for name, block in named_blocks(unet)}
    attention = {name for name, w in width.items() if w}
    assert recompute_plan(unet, 1.0) == frozenset()
    assert recompute_plan(unet, 0.0) == attention and "input_blocks.1" not in attention  # SDXL's level 0
    half = recompute_plan(unet, 0.5)
    assert len(half) == (len(attention) + 1) // 2
    assert max(width[n] for n in half) <= min(width[n] for n in attention - half)
    with pytest.raises(ValueError, match="memory budget"):
        recompute_plan(unet, 1.5)


@pytest.fixture(scope="module")
def world(tmp_path_factory, comfy_path):
    """The demo world: a manifest of rendered pairs, a tiny student encoder, tiny SD1.5 parts."""
    from training.miniworld.world import read_pairs, write_dataset
    from training.miniworld.tiny_base import tiny_sd15_parts

    root = tmp_path_factory.mktemp("world")
    pairs = [p for p in read_pairs() if not p["held_out"]][:96]
    manifest = write_dataset(root / "data", pairs)
    encoder_dir = make_chinese_clip(root / "chinese-clip-tiny", extra_text=[p["zh"] for p in read_pairs()])
    return {"root": root, "manifest": manifest, "encoder_dir": encoder_dir, "parts": tiny_sd15_parts("demo")}


def make_trainer(world, out: Path, manifest: Path | None = None, parts=None, **overrides):
    from training.data.sampling import read_manifest
    from training.loop import Trainer
    from training.miniworld.demo import demo_config

    cfg = replace(demo_config(out, overrides.pop("steps", 4), 0), batch_size=8, progress=False,
                  cache_dir=None, memory_cache=True, **overrides)
    encoder = load_language_encoder(world["encoder_dir"])
    return Trainer(cfg, parts or world["parts"], encoder, read_manifest(manifest or world["manifest"]))


def write_manifest(world, dest: Path, n: int, kind: str) -> Path:
    """The world's first ``n`` samples (absolute image paths) as ``kind`` samples."""
    root = world["manifest"].parent
    items = [json.loads(line) for line in world["manifest"].read_text(encoding="utf-8").splitlines()[:n]]
    dest.write_text("".join(json.dumps({**item, "image": str(root / item["image"]), "kind": kind}, ensure_ascii=False)
                            + "\n" for item in items), encoding="utf-8")
    return dest


def test_kd_loss_equals_independent_computation(world, tmp_path):
    from training.step.distill import sample_generator

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
    l_fkd = sum(mse(student[n], teacher[n]) for n in trainer.distiller.tap_names)
    kd = batch.kd_mask
    expected = ((1 - kd) * l_sd + kd * (1.0 * l_lkd + 0.1 * l_fkd)).mean()  # PEA: SD on native, KD on parallel
    assert torch.allclose(loss, expected, rtol=1e-4), (loss.item(), expected.item())
    assert torch.allclose(parts["lkd"], l_lkd, rtol=1e-4) and torch.allclose(parts["fkd"], l_fkd, rtol=1e-4)
    trainer.distiller.weights = replace(trainer.distiller.weights, sd_on_parallel=True)  # Table 2's ablation rows
    ablation, _ = trainer.distiller(batch, step=3)
    expected = (l_sd + kd * (1.0 * l_lkd + 0.1 * l_fkd)).mean()
    assert torch.allclose(ablation, expected, rtol=1e-4), (ablation.item(), expected.item())


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


@pytest.mark.once
def test_interrupted_and_resumed_run_reproduces_losses(world, tmp_path, caplog):
    """A run cut at step 3 by a power failure (a torn log line, a checkpoint write left as its temp
    file) resumes to the uninterrupted run's losses; a new run may not start over it; older
    checkpoints are pruned; --overwrite starts afresh and leaves the user's own files alone."""
    from tests.broken_training_files import interrupted_writes
    from training.runs.previous import RunFolderError

    full = make_trainer(world, tmp_path / "full", steps=6, save_every=3, log_every=1)
    full.run()
    cut = tmp_path / "cut"
    make_trainer(world, cut, steps=3, save_every=3, log_every=1).run()
    with open(cut / "log.jsonl", "ab") as f:
        f.write(b'{"step": 4, "loss": 0.0')
    interrupted_writes(cut / "checkpoints" / "step_0000004.pt")
    with pytest.raises(RunFolderError, match="holds a previous run"):
        make_trainer(world, cut, steps=6)
    with caplog.at_level("WARNING"):
        resumed = make_trainer(world, cut, steps=6, save_every=1, keep_checkpoints=2, log_every=1, resume=cut)
        assert "removed 1 temp file(s) left by interrupted writes" in caplog.text
        resumed.run()
    assert "log.jsonl: dropping 1 unreadable line(s) (4)" in caplog.text
    losses = lambda d: [(e["step"], e["loss"]) for e in map(json.loads, (d / "log.jsonl").read_text().splitlines())]  # noqa: E731
    full_log, cut_log = losses(tmp_path / "full"), losses(cut)
    assert [s for s, _ in cut_log] == [1, 2, 3, 4, 5, 6]
    for (s1, l1), (s2, l2) in zip(full_log, cut_log):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-6)
    a, b = (load_adapter(d / "pea_demo_zh.safetensors") for d in (tmp_path / "full", cut))
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-6)
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_0000005.pt", "step_0000006.pt"]

    (tmp_path / "full" / "notes.txt").write_text("mine")
    make_trainer(world, tmp_path / "full", steps=1, save_every=1, overwrite=True).run()
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    assert [p.name for p in (tmp_path / "full" / "checkpoints").iterdir()] == ["step_0000001.pt"]
    assert [s for s, _ in losses(tmp_path / "full")] == [1]


@pytest.mark.once
def test_without_kd_weights_parallel_samples_keep_the_adapter_and_native_ones_move_it(world, tmp_path, caplog):
    from adapters import save_adapter
    from training.step.objective import LossWeights

    start = make_trainer(world, tmp_path / "start", steps=1)
    init = save_adapter(start.adapter, start.adapter_info(), tmp_path / "init.safetensors")
    initial = load_adapter(init).state_dict()
    trained = {}
    for kind in ("parallel", "native"):
        manifest = write_manifest(world, tmp_path / f"{kind}.jsonl", 16, kind)
        with caplog.at_level(logging.WARNING, logger="training.loop"):
            trainer = make_trainer(world, tmp_path / kind, manifest, steps=3, save_every=0, init_adapter=init,
                                   weight_decay=0.0, weights=LossWeights(sd=1.0, logit=0.0, feature=0.0))
        trainer.run()
        trained[kind] = load_adapter(tmp_path / kind / "pea_demo_zh.safetensors").state_dict()
    assert all(torch.equal(trained["parallel"][k], v) for k, v in initial.items())  # bit-identical: no L_SD on them
    assert any(not torch.equal(trained["native"][k], v) for k, v in initial.items())
    warnings = [r.getMessage() for r in caplog.records if "nothing can train" in r.getMessage()]
    assert len(warnings) == 1 and "only parallel samples" in warnings[0], warnings


@pytest.mark.once
def test_non_finite_steps_are_skipped_counted_and_stop_the_run(world, tmp_path):
    from training.miniworld.tiny_base import tiny_sd15_parts
    from training.step.guard import NonFiniteError

    parts = tiny_sd15_parts("demo")
    parts.vae.first_stage_model.vae_shift.data.fill_(float("nan"))  # a broken VAE: every latent is NaN
    trainer = make_trainer(world, tmp_path, parts=parts, steps=10, max_bad_steps=3, save_every=2, log_every=1)
    initial = {k: v.clone() for k, v in trainer.adapter.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"stopped at step 3: 3 steps in a row were skipped .*not finite .*"
                                             r"fp16 overflow.*broken VAE.*Last good checkpoint: .*step_0000002.pt"):
        trainer.run()
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["skipped_steps"] for line in lines if "skipped" in line] == [1, 2, 3]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["skipped_steps"] == 3 and summary["adapter"] is None and "stopped at step 3" in summary["stopped"]
    assert not (tmp_path / "pea_demo_zh.safetensors").exists()
    ckpt = torch.load(tmp_path / "checkpoints" / "step_0000002.pt", weights_only=True)
    assert ckpt["scheduler"]["last_epoch"] == 0 and ckpt["optimizer"]["state"] == {}  # never stepped
    assert all(torch.equal(ckpt["adapter"][k], v) for k, v in initial.items())
    trainer.adapter.projector[0].weight.data[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"not writing the checkpoint of step 3: the adapter's 'projector.0.weight'"):
        trainer.save_checkpoint()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000002.pt"]


def bad_samples(folder: Path) -> dict[str, Path]:
    """Images as they turn up in scraped data: a JPEG corrupted in its middle (its header and end
    intact; Pillow would decode garbage), a file that is not an image, a missing file, and a
    10000x10 header (no pixel data: decoding it would fail differently than its refusal)."""
    from tests.broken_training_files import corrupt_middle, header_only_png, jpeg_bytes, photo

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.jpg").write_bytes(corrupt_middle(jpeg_bytes(photo(256, 256))))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    header_only_png(folder / "wide.png", 10000, 10)
    return {name: folder / name for name in ("corrupt.jpg", "broken.png", "missing.png", "wide.png")}


SKIP_REASONS = {"corrupt.jpg": "Corrupt JPEG data", "broken.png": "Truncated File Read",
                "missing.png": "file not found", "wide.png": "size 10000x10: aspect ratio 1000.0:1 is beyond 4:1"}
LONG_CAPTION = "一只红色的圆形在草地上" * 8  # 88 characters: beyond the tiny encoder's window


@pytest.mark.once
def test_bad_images_are_skipped_and_counted_once_and_long_captions_reported(world, tmp_path, caplog):
    """One global batch per epoch (7 good images + the corrupt JPEG, whose header is fine), three
    epochs: every bad image is counted once, with its reason and manifest line."""
    from training.data.sampling import read_manifest
    from training.loop import Trainer

    root = world["manifest"].parent
    good = [json.loads(line) for line in world["manifest"].read_text(encoding="utf-8").splitlines()[:7]]
    rows = [{**item, "image": str(root / item["image"])} for item in good]
    rows[0]["text"] = LONG_CAPTION
    rows += [{"image": f"bad/{name}", "text": "坏的", "en": "bad"} for name in bad_samples(tmp_path / "bad")]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    base = make_trainer(world, tmp_path / "unused")
    cfg = replace(base.cfg, output=tmp_path / "out", steps=3, log_every=1)
    with caplog.at_level("WARNING"):
        trainer = Trainer(cfg, world["parts"], base.encoder, read_manifest(manifest))
    assert "3 of 11 images are skipped" in caplog.text  # the header check: broken, missing, wide
    assert "1 of 8 captions are longer than the language encoder's window" in caplog.text
    assert len(trainer.records) == 8
    trainer.run()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["skipped_images"] == 4 and len(summary["skipped"]) == 4
    for n, (name, words) in enumerate(SKIP_REASONS.items(), 8):
        reason = summary["skipped"][str(tmp_path / "bad" / name)]
        assert words in reason and reason.endswith(f"({manifest}:{n})"), reason
    window = trainer.encoder.context_length
    assert summary["captions"]["over_window"] == 1 and summary["captions"]["window"] == window
    assert summary["captions"]["tokens_cut"] == len(LONG_CAPTION) + 2 - window  # a character a token, [CLS] [SEP]
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [e["samples"] for e in log] == [7, 7, 7] and log[-1]["skipped_images"] == 4


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(world, tmp_path):
    """Two gloo ranks of 4 samples each (ddp_worker.py under torchrun) against one process of 8 (here,
    with the worker's configuration): the same losses and adapter; every rank shares the cache folder."""
    from tests.host import ddp_worker

    worker = Path(ddp_worker.__file__)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           str(world["manifest"]), str(world["encoder_dir"]), str(tmp_path / "p2"), "4", str(tmp_path / "cache2")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ddp_worker.train(str(world["manifest"]), str(world["encoder_dir"]), tmp_path / "p1", 8, tmp_path / "cache1")
    runs = {}
    for nproc in (1, 2):
        cache = tmp_path / f"cache{nproc}"
        runs[nproc] = [json.loads(l) for l in (tmp_path / f"p{nproc}" / "log.jsonl").read_text().splitlines()]
        assert list((cache / "latents").rglob("*.pt")) and list((cache / "teacher").rglob("*.safetensors"))
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == []
    assert len(runs[1]) == len(runs[2]) == 4
    for one, two in zip(runs[1], runs[2]):
        assert one["samples"] == two["samples"] == 8
        assert one["loss"] == pytest.approx(two["loss"], rel=1e-4)
    a, b = (load_adapter(tmp_path / f"p{n}" / "pea_demo_zh.safetensors") for n in (1, 2))
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-5), k


@pytest.mark.slow
def test_demo_learns_the_language_mapping(comfy_path, tmp_path):
    """The demo with 80 steps a run instead of 250: measured 0.55 at 80 steps, 0.46 at 120, 0.26 at
    250 (README command 1); a run that learns only an average stays near 1."""
    from training.miniworld.demo import run_demo

    results = run_demo(tmp_path, steps=80, progress=False)
    assert results["ratio"] <= 0.8
    assert (tmp_path / "matched" / "pea_demo_zh.safetensors").is_file()
    assert (tmp_path / "matched" / "loss.png").stat().st_size > 0
    assert (tmp_path / "matched" / "previews" / "final.png").stat().st_size > 0
    adapter = load_adapter(tmp_path / "matched" / "pea_demo_zh.safetensors")
    assert adapter.info.encoder.kind == "chinese_clip" and adapter.info.training["steps"] > 0


@pytest.mark.once
def test_webdataset_shards_train_and_count_bad_samples(world, tmp_path):
    """Shards get the manifest's per-sample checks (bad JSON, a list, not UTF-8, no image, extreme
    size, corrupt data); each bad sample is counted once over three passes."""
    import webdataset as wds

    from training.loop import Trainer

    lines = [json.loads(l) for l in world["manifest"].read_text(encoding="utf-8").splitlines()[:8]]
    lines[0]["text"] = LONG_CAPTION
    root = world["manifest"].parent
    bad = bad_samples(tmp_path / "bad")
    urls = []
    for shard in range(2):
        url = str(tmp_path / f"train-{shard:03d}.tar")
        with wds.TarWriter(url) as sink:
            for n, item in enumerate(lines[shard::2]):
                sink.write({"__key__": f"s{shard}_{n:04d}", "png": (root / item["image"]).read_bytes(),
                            "json": json.dumps({"text": item["text"], "en": item["en"]}).encode()})
            sink.write({"__key__": f"s{shard}_broken", "png": b"not an image", "json": b'{"text": "x", "en": "x"}'})
        urls.append(url)
    with wds.TarWriter(str(tmp_path / "bad.tar")) as sink:
        sink.write({"__key__": "corrupt", "jpg": bad["corrupt.jpg"].read_bytes(), "json": b'{"text": "x", "en": "x"}'})
        sink.write({"__key__": "wide", "png": bad["wide.png"].read_bytes(), "json": b'{"text": "x", "en": "x"}'})
        sink.write({"__key__": "a_list", "png": (root / lines[0]["image"]).read_bytes(), "json": b'["x", "x"]'})
        sink.write({"__key__": "not_utf8", "png": (root / lines[0]["image"]).read_bytes(), "json": b'{"text": "\xff"}'})
        sink.write({"__key__": "no_image", "json": b'{"text": "x", "en": "x"}'})
    base = make_trainer(world, tmp_path / "unused")
    cfg = replace(base.cfg, output=tmp_path / "out", steps=3, log_every=1)
    trainer = Trainer(cfg, world["parts"], base.encoder, shards=urls + [str(tmp_path / "bad.tar")])
    trainer.run()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    shard_bad = tmp_path / "bad.tar"
    assert set(summary["skipped"]) == {f"{urls[0]}:s0_broken", f"{urls[1]}:s1_broken", f"{shard_bad}:corrupt",
                                       f"{shard_bad}:wide", f"{shard_bad}:a_list", f"{shard_bad}:not_utf8",
                                       f"{shard_bad}:no_image"}
    assert summary["skipped_images"] == 7
    assert "Corrupt JPEG data" in summary["skipped"][f"{shard_bad}:corrupt"]
    assert "aspect ratio 1000.0:1" in summary["skipped"][f"{shard_bad}:wide"]
    assert "a JSON list where an object" in summary["skipped"][f"{shard_bad}:a_list"]
    assert summary["captions"]["over_window"] == 1 and summary["captions"]["checked"] == 9
    # pass 1: the 8 good samples; the corrupt JPEG (its header is fine) is in the next two batches
    assert [json.loads(l)["samples"] for l in (tmp_path / "out" / "log.jsonl").read_text().splitlines()] == [8, 7, 7]
    assert load_adapter(tmp_path / "out" / "pea_demo_zh.safetensors").shape.head == "sd15"


def test_v_prediction_target_is_v(comfy_path):
    from training.step.objective import prediction_target
    from training.miniworld.tiny_base import tiny_unet_model

    ms = tiny_unet_model("demo", v_prediction=True).model_sampling
    z0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sigma = ms.sigma(torch.tensor([5.0, 400.0, 990.0]))
    noisy = ms.noise_scaling(sigma, eps, z0)
    s = sigma[:, None, None, None]
    v = (eps - s * z0) / (s ** 2 + 1) ** 0.5   # alpha_t * eps - sigma_t * z0 in DDPM terms
    assert torch.allclose(prediction_target(ms, sigma, noisy, z0), v, atol=1e-4)


@pytest.mark.parametrize("checkpoint,message", [
    ("checkpoints/sd15_standin.safetensors", "has no text encoder; the teacher needs the checkpoint's own CLIP"),
    ("diffusion_models/flux_schnell_standin.safetensors",
     "flux_schnell_standin.safetensors is a FLUX.1 model (Flux (FluxSchnell)); the trainer distils "
     "adapters for SD1.5 and SDXL checkpoints"),
])
@pytest.mark.once
def test_cli_refuses_a_base_it_cannot_train(comfy_path, base_dir, tmp_path, checkpoint, message):
    cmd = [sys.executable, str(Path(__file__).resolve().parents[2] / "training" / "train_adapter.py"),
           "--checkpoint", str(base_dir / "models" / checkpoint),
           "--encoder", str(base_dir / "models" / "language_clip" / "chinese-clip-tiny"),
           "--manifest", str(tmp_path / "m.jsonl"), "--cpu", "--output", str(tmp_path / "out")]
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "text": "猫", "en": "cat"}\n')
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, COMFYUI_PATH=str(comfy_path)))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert message in result.stderr, result.stderr[-3000:]


@pytest.mark.once
def test_cli_refuses_a_reused_run_folder_and_a_faulty_manifest_before_loading(comfy_path, base_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"image": "a.png", "text": "\xff", "en": "cat"}\n["a.png"]\n')
    cmd = [sys.executable, str(Path(__file__).resolve().parents[2] / "training" / "train_adapter.py"),
           "--checkpoint", "not_loaded.safetensors", "--encoder", str(tmp_path / "not_loaded"),
           "--manifest", str(manifest), "--cpu", "--output", str(out)]
    env = dict(os.environ, COMFYUI_PATH=str(comfy_path))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: {out} holds a previous run (log.jsonl). Continue it with --resume {out}" in result.stderr
    result = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: {manifest}: 2 faulty lines, nothing was trained" in result.stderr
    assert f"{manifest}:1: not UTF-8 text" in result.stderr and f"{manifest}:2: a JSON list" in result.stderr
    assert (out / "log.jsonl").is_file()  # --overwrite deletes nothing before the run can start


@pytest.mark.once
@pytest.mark.skipif(sys.platform == "win32", reason="holds the first run with a named pipe")
def test_two_runs_on_one_new_folder_at_once_one_is_refused(comfy_path, tmp_path):
    """The first run claims the folder, then waits reading its manifest (a named pipe); a second run
    started on the same folder meanwhile is refused before loading anything."""
    out, held = tmp_path / "out", tmp_path / "held.jsonl"
    os.mkfifo(held)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png", "text": "猫", "en": "cat"}\n')
    cmd = [sys.executable, str(Path(__file__).resolve().parents[2] / "training" / "train_adapter.py"),
           "--checkpoint", "not_loaded.safetensors", "--encoder", str(tmp_path / "not_loaded"), "--cpu",
           "--output", str(out), "--manifest"]
    env = dict(os.environ, COMFYUI_PATH=str(comfy_path))
    first = subprocess.Popen(cmd + [str(held)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".pea-run.lock").is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (out / ".pea-run.lock").is_file(), first.communicate(timeout=10)
        second = subprocess.run(cmd + [str(manifest)], capture_output=True, text=True, timeout=300, env=env)
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
        assert second.stderr.strip() == (f"error: {out} is in use by another run (process {first.pid} on "
                                         f"{socket.gethostname()}); wait for it to finish or choose another --output. "
                                         f"If no run is using it, delete {out / '.pea-run.lock'}.")
        with open(held, "w") as f:  # let the first run go on: a faulty manifest ends it
            f.write("[]\n")
        assert first.wait(timeout=120) == 1 and "faulty line" in first.stderr.read()
    finally:
        first.kill()
        first.wait()
    assert not (out / ".pea-run.lock").exists()  # released when its process exited

@pytest.mark.once
def test_benchmark_cpu_configuration_prints_ratios(comfy_path, tmp_path, capsys, monkeypatch):
    from benchmarks.train_step import MIN_STEPS, MIN_WARMUP, main
    from training.step.distill import Distiller

    calls = []
    step = Distiller.forward
    monkeypatch.setattr(Distiller, "forward", lambda self, *a, **k: calls.append(1) or step(self, *a, **k))
    assert main(["--batch", "2", "--resolution", "32", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "official" in out and "ours" in out and "ratio" in out and "by --memory-budget" in out
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["speed_ratio"] > 0 and result["saved_ratio"] > 0 and result["ours"]["tflop_per_step"] > 0
    # ours is the trainer's own step: every warm-up, timed, FLOP-counting and memory pass ran Distiller
    assert len(calls) == MIN_WARMUP + MIN_STEPS + 1 + len(result["ours"]["saved_by_budget"])
    by_budget = list(result["ours"]["saved_by_budget"].values())
    assert by_budget == sorted(by_budget, reverse=True) and by_budget[-1] < by_budget[0]


@pytest.mark.once
def test_kept_bytes_are_what_autograd_saves(comfy_path):
    """Without recompute, the bytes alive after the forward pass are the tensors autograd saved
    (what saved_tensors_hooks see); recomputing blocks keeps fewer."""
    from torch.multiprocessing.reductions import StorageWeakRef

    from training.step.memory import RetainedTensors
    from training.step.taps import tap_names
    from training.miniworld.tiny_base import tiny_unet_model
    from training.step.unet_pass import recompute_plan, tapped_forward

    unet = tiny_unet_model("sdxl").diffusion_model.requires_grad_(False)
    taps = frozenset(tap_names(unet))
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 700.0]), torch.randn(2, 2816)
    ctx = torch.randn(2, 7, 64, requires_grad=True)
    existing = {StorageWeakRef(v.untyped_storage()) for v in [x, t, y, ctx, *unet.parameters(), *unet.buffers()]}

    def kept(recompute):
        saved = {}

        def pack(v):
            ref = StorageWeakRef(v.untyped_storage())
            if ref not in existing:
                saved[ref] = v.untyped_storage().nbytes()
            return v

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda v: v) if not recompute else contextlib.nullcontext()
        with RetainedTensors() as retained, hooks:
            out, feats = tapped_forward(unet, x, t, ctx, y, taps, recompute)
            loss = out.square().mean() + sum(f.square().mean() for f in feats.values())
        del out, feats  # the loss holds the graph, and with it what was kept for backward
        alive = retained.alive_bytes()
        del loss
        return alive, sum(saved.values())

    alive, saved = kept(frozenset())
    assert saved > 0 and abs(alive - saved) <= 64  # the loss scalar itself
    assert kept(recompute_plan(unet, 0.0))[0] < 0.6 * alive


def test_cfg_dropout_gives_each_dropped_sample_the_empty_prompt(world, tmp_path):
    trainer = make_trainer(world, tmp_path, cfg_dropout=0.5)
    d = trainer.distiller
    batch = trainer.make_batch((64, 64), trainer.records[:8], list(range(8)))
    tokens = batch.teacher_tokens
    empty = replace(batch, ids=d.empty_ids.expand(8, -1),
                    teacher_tokens=d.empty_tokens.repeat(8, tokens.shape[1] // d.empty_tokens.shape[1], 1),
                    teacher_pooled=None if batch.teacher_pooled is None else d.empty_pooled.expand(8, -1))
    drop = d.draws(batch, 0, tokens.device)[2]
    assert 0 < drop.sum() < 8  # this step drops some samples and keeps others
    with torch.no_grad():
        mixed = d(batch, 0)[1]["loss"]
        d.cfg_dropout = 0.0
        kept, dropped = d(batch, 0)[1]["loss"], d(empty, 0)[1]["loss"]
    assert torch.allclose(mixed, torch.where(drop, dropped, kept), rtol=1e-5)
    assert not torch.allclose(kept, dropped)


@pytest.mark.slow
def test_compiled_step_is_one_graph_per_pass_across_buckets(world, tmp_path):
    """torch.compile of the trainer's step: no graph break, one graph per pass (teacher, student)
    shared by two aspect buckets and a short batch, losses and adapter gradients as eager within
    fp32 rounding (relative 1e-4; the GPU benchmark states its bf16 tolerance). The aot_eager
    backend captures exactly what Inductor would get, without a C++ compiler run per kernel."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager = make_trainer(world, tmp_path / "eager", memory_budget=0.5)
    compiled = make_trainer(world, tmp_path / "compiled", memory_budget=0.5, compile="aot_eager")
    for step, (bucket, size) in enumerate([((64, 64), 4), ((64, 64), 4), ((96, 64), 4), ((64, 96), 3)]):
        batch = compiled.make_batch(bucket, compiled.records[:size], list(range(size)))
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            loss = compiled.distiller(batch, step)[0]
            loss.backward()
        ref = eager.distiller(batch, step)[0]
        ref.backward()
        assert torch.allclose(loss, ref, rtol=1e-4), (step, loss.item(), ref.item())
        for p, q in zip(compiled.adapter.parameters(), eager.adapter.parameters()):
            assert (p.grad - q.grad).abs().max() <= 1e-4 * q.grad.abs().max(), step
        compiled.optimizer.zero_grad(set_to_none=True)
        eager.optimizer.zero_grad(set_to_none=True)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 2


OPENED: list[str] | None = None
"""Paths the process opens while a test watches (``watch_opens``); None when nobody watches."""


def _record_open(event: str, args: tuple) -> None:
    if OPENED is not None and event == "open" and isinstance(args[0], (str, os.PathLike)):
        OPENED.append(os.fspath(args[0]))


@contextlib.contextmanager
def watch_opens():
    """The paths opened inside the block (Python's audit events; installed once per process)."""
    global OPENED
    if not getattr(watch_opens, "installed", False):
        sys.addaudithook(_record_open)
        watch_opens.installed = True
    OPENED = opened = []
    try:
        yield opened
    finally:
        OPENED = None


def window_of(sd_tokenizer, text: str) -> list[tuple[int, float]]:
    """``text`` through the CLIP tokenizer itself, no prompt parser: the authors' teacher input
    (diffusers, ``truncation=True``, 77 tokens), padded with the model's own pad token."""
    ids = sd_tokenizer.tokenizer(text, truncation=True, max_length=77)["input_ids"]
    return [(t, 1.0) for t in ids + [sd_tokenizer.pad_token] * (77 - len(ids))]


WEIGHTED_CAPTION = "a (golden retriever:1.5) in embedding:foo style"


def test_teacher_reads_captions_as_literal_text_cut_at_77_tokens(comfy_path, tmp_path):
    """Prompt syntax in a caption reaches the teacher as text: no weights, no textual inversion
    read, even with an embedding of that name at hand; a long caption keeps its first 77 tokens."""
    import types

    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models as sm

    from training.data.caches import TeacherText, literal_tokens
    from training.miniworld.tiny_base import TINY_CLIP, init_weights

    embeddings = tmp_path / "embeddings"
    embeddings.mkdir()
    torch.save({"clip_l": torch.randn(2, 64), "clip_g": torch.randn(2, 1280)}, embeddings / "foo.pt")
    clip = comfy.sd.CLIP(sm.SD15({}).clip_target(), embedding_directory=str(embeddings),
                         model_options={"clip_l_model_config": TINY_CLIP})
    init_weights(clip.cond_stage_model, 1)
    with watch_opens() as opened:
        parsed = clip.tokenize(WEIGHTED_CAPTION)
    assert any(isinstance(t, torch.Tensor) for t, _ in parsed["l"][0])  # ComfyUI's parser does read foo.pt
    assert {w for _, w in parsed["l"][0]} != {1.0} and str(embeddings / "foo.pt") in opened

    long_caption = " ".join(["a red lantern over the river"] * 20)  # 120 words, two windows for ComfyUI
    assert len(clip.tokenize(long_caption)["l"]) == 2
    teacher = TeacherText(clip)
    for caption in (WEIGHTED_CAPTION, "embedding:foo\nembedding:foo, \\(x) (y:2)", long_caption):
        with watch_opens() as opened:
            got = teacher.encode(caption)["tokens"]
        assert not any(path.startswith(str(embeddings)) for path in opened)
        expected = clip.encode_from_tokens_scheduled({"l": [window_of(clip.tokenizer.clip_l, caption)]})[0][0]
        assert got.shape == (1, 77, 64) and torch.equal(got, expected.float())

    sdxl = comfy.sdxl_clip.SDXLTokenizer(embedding_directory=str(embeddings))  # both of SDXL's CLIPs
    tokens = literal_tokens(types.SimpleNamespace(tokenize=sdxl.tokenize_with_weights), WEIGHTED_CAPTION)
    assert tokens == {"l": [window_of(sdxl.clip_l, WEIGHTED_CAPTION)], "g": [window_of(sdxl.clip_g, WEIGHTED_CAPTION)]}
