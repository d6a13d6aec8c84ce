"""The miniature-world proof, reduced: one seed, the PEA row, no lantern or trigger rows, for each
teacher family (the full tables are ``python -m training.miniworld.proof [--family sdxl]``;
docs/world_proof.md)."""
from __future__ import annotations

import json

import pytest

FLOORS = {"sd15": 0.63, "sdxl": 0.59}
"""PEA / teacher mean attribute accuracy, in each language, must stay above this. The test trains
its student for the world's ``quick_steps`` (SD1.5 600, SDXL 400) of ``quick_batch`` (32), not the
tables' 1200 (of batch 32 in the SD1.5 world, 64 in the SDXL one), to keep the suite within its
time budget. Each floor sits about 0.11 below the lower of seed 0's results on one and on two
torch threads (2026-12-07), for other machines' arithmetic: thread counts change the reductions,
and these students are chaotic enough that it shows.

SD1.5: seed 0 breaks through between steps 300 and 400 (its logit KD 0.019 at step 280, 0.011 at
400 on two threads, still 0.017 on one), so at 400 steps it gave 0.70 and 0.74 (Chinese, Russian)
on two threads and 0.50 and 0.50 on one: too close to the cusp for a floor. At 600 steps: 0.75 and
0.98 on two threads, 0.77 and 0.75 on one (at 1200 the table's 0.95 and 0.87). Far above a trainer
that stops transferring: text-space alignment measures 0.35x, chance 0.30x.

SDXL: its students read the world through the pretrained encoder (``miniworld/encoder.py``). Seed 0
at 400 steps gave 0.735 and 0.791 on one thread, 0.69 and 0.70 on two (on the encoder as
initialised 0.42 and 0.46). The table's KD-free row reaches the teacher in this world too
(0.99x/0.98x at 1200 steps), so this floor guards the SDXL path (head, pooled vector, size ids, the
pretrained encoder, sampling) against a break that leaves the student near chance. Neither floor
measures what distillation adds over fine-tuning (the SD1.5 world's KD-free row reaches 0.83x/0.71x
at 1200 steps): the tables do. Batch 32 halves the SDXL floor's cost against the table's batch."""


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FLOORS))
def test_reduced_world_proof_keeps_the_pea_student_near_the_teacher(comfy_path, tmp_path, family):
    from training.miniworld.proof import OURS, WORLDS, run_proof

    spec = WORLDS[family]
    results = run_proof(tmp_path / "proof", seeds=[0], rows=(OURS,), steps=spec.quick_steps, batch=spec.quick_batch,
                        progress=False, concept=False, family=family)
    judge = results["judge_on_drawn_images"]
    assert min(judge[k] for k in ("color", "shape", "place", "size")) >= 0.95, judge
    summary = {row: s["mean"]["mean"] for row, s in results["summary"].items()}
    teacher = summary["teacher, English prompts"]
    assert teacher > 0.6, summary  # chance is 0.25 (8 colours, 7 shapes, 4 places, 2 sizes)
    for lang in ("zh", "ru"):
        assert summary[f"{OURS} ({lang})"] >= FLOORS[family] * teacher, (lang, summary)
    saved = json.loads((tmp_path / "proof" / "proof.json").read_text(encoding="utf-8"))
    assert saved["summary"].keys() == results["summary"].keys() and saved["family"] == family
    assert (saved["steps"], saved["batch"]) == (spec.quick_steps, spec.quick_batch)
    assert (tmp_path / "proof" / "samples.png").stat().st_size > 0


@pytest.mark.once
def test_trigger_rows_condition_through_the_pack_like_the_students(comfy_path, tmp_path):
    """The SDXL world's trigger rows go through the pack's own PEA CLIP (Apply PEA Adapter with the
    teacher's CLIP): without a span it gives exactly the student's conditioning the other rows
    sample with; a backtick span adds the teacher CLIP's tokens of the English word after them."""
    import torch

    from adapters import AdapterShape, EncoderSpec, PEAAdapter, load_language_encoder
    from adapters.demo_files import make_chinese_clip
    from adapters.families import family_of
    from adapters.file_format import save_adapter
    from adapters.metadata import AdapterInfo
    from training.data.caches import TeacherText
    from training.miniworld.proof import PackConditioner, trigger_prompts
    from training.miniworld.tiny_base import tiny_sdxl_parts
    from training.miniworld.world import read_pairs

    parts = tiny_sdxl_parts()
    orange = [p for p in read_pairs() if p["color"] == "orange" and not p["native"]][:3]
    folder = make_chinese_clip(tmp_path / "zh", extra_text=[p["zh"] for p in orange], max_positions=80, hidden=32)
    encoder = load_language_encoder(folder, context_length=77)
    torch.manual_seed(0)
    adapter = PEAAdapter(AdapterShape.for_family(family_of(parts.model), 32, (48,))).eval()
    spec = EncoderSpec(encoder.kind, encoder.name, "last", encoder.context_length, encoder.use_attention_mask)
    adapter_file = save_adapter(adapter, AdapterInfo(shape=adapter.shape, encoder=spec, languages=["zh"]),
                                tmp_path / "adapter.safetensors")
    through_pack = PackConditioner(folder, parts.clip, adapter_file)

    alone = trigger_prompts(orange, "orange", span=False)
    assert alone[0].startswith("一个") and "orange" in alone[0] and "橙色" not in alone[0]
    tokens, pooled = through_pack(alone)
    with torch.no_grad():
        expected_tokens, expected_pooled = adapter(encoder.encode(alone).float())
    assert torch.allclose(tokens, expected_tokens, atol=1e-5) and torch.allclose(pooled, expected_pooled, atol=1e-5)

    spans = trigger_prompts(orange, "orange", span=True)
    assert "`orange`" in spans[0]
    joined, joined_pooled = through_pack(spans)
    english = TeacherText(parts.clip).encode("orange")["tokens"]
    assert joined.shape == (3, 154, 96) and torch.allclose(joined[:, 77:], english.expand(3, -1, -1), atol=1e-5)
    language_only = through_pack([s.replace("`orange`", " ") for s in spans])
    assert torch.allclose(joined[:, :77], language_only[0], atol=1e-5)
    assert torch.allclose(joined_pooled, language_only[1], atol=1e-5)


@pytest.mark.once
def test_free_token_oracle_steers_the_sdxl_teacher_by_kd_alone(comfy_path, tmp_path):
    """The oracle's free tokens, two captions, 40 steps: both KD terms fall (measured 0.024 -> 0.016
    logit, 27 -> 8.5 feature; at 400 steps on 16 captions the free tokens sample at the teacher's
    accuracy, docs/world_proof.md), and the teacher's row is sampled and judged like the proof's
    (measured 0.91, chance 0.25)."""
    from training.miniworld.oracle import run_oracle

    result = run_oracle(tmp_path / "oracle", "sdxl", captions=2, steps=40)
    first, last = result["kd"][0], result["kd"][-1]
    assert last["step"] == 40 and last["lkd"] < 0.75 * first["lkd"] and last["fkd"] < 0.6 * first["fkd"], result["kd"]
    assert set(result["rows"]) == {"teacher, English prompts", "free tokens (KD only)"}
    assert result["rows"]["teacher, English prompts"]["mean"] > 0.5, result["rows"]


def test_a_teacher_file_keeps_the_vae_calibration_of_its_latents(comfy_path, tmp_path):
    """The shipped teachers carry the TAESD calibration they were trained with (so a world loads it
    instead of encoding every training image again); a saved teacher gives it back bit for bit, and
    a file without it is not loaded; a damaged one is refused, naming the file and the entry."""
    import safetensors.torch
    import torch

    from adapters import PEAError
    from training.miniworld.teacher import SHIPPED_TEACHERS, load_unet, save_unet
    from training.miniworld.tiny_base import TINY_PARTS, calibrate_vae, vae_calibration

    for family, shipped in SHIPPED_TEACHERS.items():
        assert load_unet(TINY_PARTS[family](seed=0), shipped), shipped
    parts, fresh = TINY_PARTS["sdxl"](seed=0), TINY_PARTS["sdxl"](seed=1)
    calibrate_vae(parts, torch.rand(4, 64, 64, 3, generator=torch.Generator().manual_seed(0)))
    save_unet(parts, tmp_path / "teacher.safetensors")
    assert load_unet(fresh, tmp_path / "teacher.safetensors")
    assert vae_calibration(fresh) == vae_calibration(parts) != vae_calibration(TINY_PARTS["sdxl"](seed=0))
    for name in ("vae_scale", "vae_shift"):
        assert torch.equal(getattr(fresh.vae.first_stage_model, name), getattr(parts.vae.first_stage_model, name))
    unet = parts.model.model.diffusion_model.state_dict()
    assert all(torch.equal(v, unet[k]) for k, v in fresh.model.model.diffusion_model.state_dict().items())
    safetensors.torch.save_file(unet, str(tmp_path / "bare.safetensors"))
    other = TINY_PARTS["sdxl"](seed=2)
    before = {k: v.clone() for k, v in other.model.model.diffusion_model.state_dict().items()}
    assert not load_unet(other, tmp_path / "bare.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in other.model.model.diffusion_model.state_dict().items())
    for name, text in (("vae_scale", "nan"), ("vae_shift", "inf"), ("vae_scale", "0.0"), ("vae_shift", "x")):
        damaged = tmp_path / "damaged.safetensors"
        safetensors.torch.save_file(unet, str(damaged), metadata={**vae_calibration(parts), name: text})
        with pytest.raises(PEAError, match=rf"damaged\.safetensors.*{name} is '{text}'"):
            load_unet(other, damaged)
        assert all(torch.equal(v, before[k]) for k, v in other.model.model.diffusion_model.state_dict().items())


@pytest.mark.parametrize("family", sorted(FLOORS))
def test_the_shipped_teachers_read_their_timestep(comfy_path, family):
    """Each shipped teacher's noise prediction moves with the timestep, as a diffusion model's must.
    The first SDXL teacher's did not (t=10 against t=990: 2.6e-6 RMS): its label embedding had
    saturated the SiLU before every block's timestep input (``teacher.LABEL_LR_SCALE``). Measured
    since: SD1.5 0.077, SDXL 0.046; the embedding's mean absolute value 0.13 (the first: 8.5)."""
    import torch

    from training.data.caches import TeacherText
    from training.miniworld.teacher import SHIPPED_TEACHERS, load_unet
    from training.miniworld.tiny_base import TINY_PARTS
    from training.miniworld.world import read_pairs
    from training.step.distill import sdxl_label

    parts = TINY_PARTS[family](seed=0)
    assert load_unet(parts, SHIPPED_TEACHERS[family])
    base, captions = parts.model.model, [p["en"] for p in read_pairs() if p["en"]][:16]
    tokens, pooled = TeacherText(parts.clip, memory=True).encode_batch(captions)
    y = sdxl_label(base, pooled, (64, 64), {})
    noisy = torch.randn(len(captions), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        early, late = (base.diffusion_model(noisy, torch.full((len(captions),), t), context=tokens, y=y)
                       for t in (10.0, 990.0))
        if y is not None:
            assert base.diffusion_model.label_emb(y).abs().mean() < 1.0
    assert (early - late).pow(2).mean().sqrt() > 0.01
