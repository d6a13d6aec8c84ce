"""Evaluation parts that need no ComfyUI: prompt sets and their schema, translation, FID."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from tests.standins import encoders as standins
from evaluation.errors import EvaluationError, PromptSetError
from evaluation.prompts import SHIPPED_ROOT, check_collection, load_prompt_set, read_prompt_file
from tests.evaluation_standins import MINIMUMS, PROMPT_SETS, write_inception_weights, write_random_images


def test_shipped_prompt_sets_follow_the_schema():
    """The shipped sets: every prompt has its English reference, ids are unique, the general set
    means the same in every language, and the counts are at least 100 per language (general) and
    40 Chinese / 20 for every other language (culture)."""
    if not SHIPPED_ROOT.is_dir():
        pytest.skip(f"{SHIPPED_ROOT} is absent (the shipped prompt sets are not in this checkout)")
    counts = check_collection(SHIPPED_ROOT)
    languages = {"zh", "ru", "ko", "ja", "it", "fr", "de", "es"}
    assert set(counts["general"]) == languages and set(counts["culture"]) == languages, counts
    assert all(n >= 100 for n in counts["general"].values())
    assert counts["culture"]["zh"] >= 40 and all(n >= 20 for n in counts["culture"].values())


def test_the_fixture_collection_passes_the_same_check():
    assert check_collection(PROMPT_SETS, MINIMUMS) == {"general": {"zh": 3, "ru": 3}, "culture": {"zh": 2, "ru": 1}}
    prompts = load_prompt_set(PROMPT_SETS / "general", ["ru"])
    assert [p.id for p in prompts] == ["general-001", "general-002", "general-003"]
    assert {p.language for p in prompts} == {"ru"} and all(p.en for p in prompts)


def broken_copy(tmp_path: Path, lang: str, edit) -> Path:
    """A copy of the fixture collection with one line of general/<lang>.jsonl edited."""
    root = tmp_path / "sets"
    shutil.copytree(PROMPT_SETS, root)
    path = root / "general" / f"{lang}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = edit(json.loads(lines[1]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("edit, message", [
    (lambda o: json.dumps({**o, "text": ""}), r"zh.jsonl:2 \(id 'general-002'\): field 'text' is missing or empty"),
    (lambda o: json.dumps({k: v for k, v in o.items() if k != "en"}), r"zh.jsonl:2 .*field 'en' is missing"),
    (lambda o: json.dumps({**o, "language": "xx"}), r"zh.jsonl:2 .*unknown language code 'xx'"),
    (lambda o: json.dumps({**o, "language": "ru"}), r"language 'ru' differs from the file's \('zh'\)"),
    (lambda o: json.dumps({**o, "id": "general-001"}), r"zh.jsonl:2: id 'general-001' appears twice"),
    (lambda o: json.dumps({**o, "id": "../escape"}), r"id may hold only letters"),
    (lambda o: json.dumps({**o, "set": "other"}), r"set 'other' is neither of general, culture"),
    (lambda o: "{not json", r"zh.jsonl:2: not a JSON object"),
    (lambda o: json.dumps({**o, "id": "a" * 300}), r"zh.jsonl:2: id is 300 characters long, at most 200 allowed "
                                                   r"\(it names image files"),
])
def test_a_bad_line_is_named_with_file_line_and_field(tmp_path, edit, message):
    root = broken_copy(tmp_path, "zh", edit)
    with pytest.raises(PromptSetError, match=message):
        read_prompt_file(root / "general" / "zh.jsonl")


def test_temp_files_of_killed_image_writes_are_removed_and_only_those(tmp_path):
    import os

    from adapters.file_format import remove_abandoned_temp_files
    from tests.broken_training_files import interrupted_writes

    folder = tmp_path / "images" / "pea-x" / "zh"
    interrupted_writes(folder / "general-001_0.png", folder / "settings.json")
    killed = sorted(folder.iterdir())
    assert len(killed) == 2 and all(p.name.endswith(".tmp") for p in killed)
    kept = [folder / f".general-002_0.png.{os.getpid()}.0123abcd.tmp",  # a write of this live process
            folder / ".notes.tmp", folder / "draft.1234.0123abcd.tmp", folder / "general-003_0.png"]
    for path in kept:
        path.write_text("not abandoned, or not ours")
    assert sorted(remove_abandoned_temp_files(folder)) == killed
    assert sorted(folder.iterdir()) == sorted(kept)


def test_the_general_set_must_carry_the_same_english_in_every_language(tmp_path):
    root = broken_copy(tmp_path, "ru", lambda o: json.dumps({**o, "en": "a different sky"}, ensure_ascii=False))
    with pytest.raises(PromptSetError, match="id 'general-002' has English 'a different sky' but zh.jsonl has"):
        check_collection(root, MINIMUMS)
    root = broken_copy(tmp_path / "b", "ru", lambda o: json.dumps({**o, "id": "general-099"}, ensure_ascii=False))
    with pytest.raises(PromptSetError, match="hold different ids: only in ru.jsonl: \\['general-099'\\]"):
        check_collection(root, MINIMUMS)


def test_counts_and_missing_languages_are_checked():
    with pytest.raises(PromptSetError, match="zh.jsonl holds 3 prompts; at least 100 are expected"):
        check_collection(PROMPT_SETS, {"general": {"zh": 100}})
    with pytest.raises(PromptSetError, match="has no ko.jsonl"):
        check_collection(PROMPT_SETS, {"general": {"ko": 1}})
    with pytest.raises(PromptSetError, match="unknown language code 'klingon'"):
        load_prompt_set(PROMPT_SETS / "general", ["klingon"])
    with pytest.raises(PromptSetError, match="has no prompts in 'ja' \\(it has ru, zh\\)"):
        load_prompt_set(PROMPT_SETS / "general", ["ja"])


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    return standins.make_marian(tmp_path_factory.mktemp("translation") / "opus-mt-tiny-en")


def test_marian_translation_equals_transformers_generate(marian):
    from evaluation.translate import load_translator

    texts = ["红烧狮子头", "一只红色的猫坐在桌子上"]
    translated = load_translator(marian).translate(texts, "zh")
    tokenizer = transformers.MarianTokenizer.from_pretrained(str(marian))
    model = transformers.MarianMTModel.from_pretrained(str(marian)).eval()
    with torch.no_grad():
        ids = model.generate(**tokenizer(texts, return_tensors="pt", padding=True))
    assert translated == [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert all(isinstance(t, str) and t for t in translated)


def test_a_missing_or_wrong_translation_folder_is_named(tmp_path, encoder_dirs):
    from evaluation.translate import load_translator

    with pytest.raises(EvaluationError, match="translation model folder not found: .*opus-mt-zh-en"):
        load_translator(tmp_path / "opus-mt-zh-en")
    with pytest.raises(EvaluationError, match="model_type 'chinese_clip'; a translation model is expected: MarianMT"):
        load_translator(encoder_dirs["chinese_clip"])


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    pytest.importorskip("torch_fidelity", reason="FID tests need torch-fidelity (requirements-dev.txt)")
    return write_inception_weights(tmp_path_factory.mktemp("inception") / "weights-inception-random.pth")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The FID formula of Heusel et al., written out with scipy's matrix square root."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def test_fid_equals_the_formula_on_torch_fidelity_features(inception, tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from evaluation.fid import FID

    reference = write_random_images(tmp_path / "reference", 4, seed=1)
    generated = write_random_images(tmp_path / "generated", 3, seed=2)
    fid = FID(inception, dims=64)  # the first pool layer: FID's matrix algebra at 2048-d takes minutes on a CPU
    assert fid.set_reference(tmp_path / "reference") == 4
    value = fid.distance(generated)
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["64"], feature_extractor_weights_path=str(inception))

    def feats(paths):
        from PIL import Image
        with torch.no_grad():
            return np.concatenate([net(torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None])[0]
                                   .double().numpy() for p in paths])

    expected = frechet_distance(feats(generated), feats(reference))
    assert np.isfinite(value) and value > 0
    assert value == pytest.approx(expected, rel=1e-3)
    assert fid.distance(reference) == pytest.approx(0.0, abs=1e-3 * value)


def test_fid_refuses_unsafe_or_missing_weights(tmp_path, inception):
    from evaluation.fid import FID

    with pytest.raises(EvaluationError, match="Inception weights not found: .*nowhere.pth"):
        FID(tmp_path / "nowhere.pth")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"conv": torch.zeros(1), "note": EvaluationError("x")}, unsafe)
    with pytest.raises(EvaluationError, match="unsafe.pth holds Python objects besides tensors"):
        FID(unsafe)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(EvaluationError, match="wrong.pth does not fit torch-fidelity's InceptionV3"):
        FID(wrong)
    with pytest.raises(EvaluationError, match="FID feature dims must be one of 64, 192, 768, 2048, not 100"):
        FID(inception, dims=100)


def test_translation_at_and_past_the_models_positions_is_cut_and_counted(marian):
    """A short MarianMT (64 positions) translates a prompt at and past its limit instead of raising
    IndexError, cut to its start as transformers' own truncation cuts it, and says which were cut."""
    from evaluation.translate import load_translator

    translator = load_translator(marian)
    tokenizer = transformers.MarianTokenizer.from_pretrained(str(marian))
    lengths = {n: len(tokenizer("猫" * n)["input_ids"]) for n in range(40, 140)}
    at = next(n for n, length in lengths.items() if length == 64)
    texts = ["猫" * at, "红烧狮子头，" * 40]
    assert translator.max_length == 64 and translator.truncated(texts) == [False, True]
    translated = translator.translate(texts, "zh")
    model = transformers.MarianMTModel.from_pretrained(str(marian)).eval()
    with torch.no_grad():
        ids = model.generate(**tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=64))
    assert translated == [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def test_a_model_file_rewritten_in_place_with_the_same_size_changes_its_identity(tmp_path):
    from evaluation.identity import CACHE_NAME, ContentIds

    adapter = tmp_path / "models" / "pea.safetensors"
    adapter.parent.mkdir()
    adapter.write_bytes(b"a" * 1000)
    ids = ContentIds(tmp_path / "out")
    before = ids.of(adapter)
    assert before == ContentIds(tmp_path / "out").of(adapter), "the same file, read from the cache"
    cached = json.loads((tmp_path / "out" / CACHE_NAME).read_text(encoding="utf-8"))
    assert cached[str(adapter.resolve())]["sha256"] == before["sha256"]
    adapter.write_bytes(b"b" * 1000)  # retrained in place: the same size, a new modification time
    assert ContentIds(tmp_path / "out").of(adapter) != before


def test_a_folders_identity_is_its_model_files_by_content(tmp_path, marian):
    from evaluation.identity import ContentIds

    folder = shutil.copytree(marian, tmp_path / "opus-mt")
    ids = ContentIds(tmp_path / "out")
    before = ids.of(folder)
    assert {"config.json", "source.spm", "vocab.json"} <= set(before["files"])
    (folder / "README.md").write_text("notes", encoding="utf-8")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.json").write_text("{}", encoding="utf-8")
    assert ids.of(folder) == before, "notes and hidden files are not the model"
    assert ids.of(shutil.copytree(folder, tmp_path / "moved")) == before, "where it lies does not count"
    (folder / "config.json").write_text((folder / "config.json").read_text(encoding="utf-8") + " ", encoding="utf-8")
    assert ids.of(folder) != before


def test_a_changed_record_is_refused_naming_the_field_or_rewritten_on_request(tmp_path):
    from evaluation.generate import check_record

    path = tmp_path / "images" / "pea-a" / "zh" / "settings.json"
    record = {"kind": "pea", "adapter": {"sha256": "1" * 64}, "language_clip": {"files": {"config.json": "2"}}}
    check_record(path, record)
    check_record(path, record)
    changed = {**record, "language_clip": {"files": {"config.json": "3"}}}
    with pytest.raises(EvaluationError, match=r"pea-a.zh holds images made with other settings or model files "
                                              r"\(language_clip/files/config.json changed.*--remake-changed"):
        check_record(path, changed)
    check_record(path, changed, remake=True)
    assert json.loads(path.read_text(encoding="utf-8")) == changed


def test_an_image_is_reused_only_where_its_png_records_the_job(tmp_path):
    from PIL import Image

    from evaluation.generate import Method, jobs_to_make, plan, save_png
    from evaluation.prompts import Prompt

    method = Method("pea-a", "pea")
    prompt = Prompt("general-001", "zh", "一只猫", "a cat", "animals", "general")
    settings = {("pea-a", "zh"): {"kind": "pea", "sampling": {"steps": 2}}}
    jobs = plan([method], [prompt], {}, 2, 0, tmp_path, settings)
    for job in jobs:
        save_png(Image.new("RGB", (8, 8)), job.path, job.record())
    assert jobs_to_make(jobs) == []
    edited = plan([method], [Prompt(**{**prompt.as_dict(), "text": "两只黑狗"})], {}, 2, 0, tmp_path, settings)
    with pytest.raises(EvaluationError, match=r"2 image\(s\) on disk were made otherwise than this run asks: "
                                              r".*general-001_0.png \(text\).*--remake-changed"):
        jobs_to_make(edited)
    assert jobs_to_make(edited, remake=True) == edited
    other = {("pea-a", "zh"): {"kind": "pea", "sampling": {"steps": 3}}}
    resampled = plan([method], [prompt], {}, 2, 0, tmp_path, other)
    with pytest.raises(EvaluationError, match=r"\(settings/sampling/steps\)"):
        jobs_to_make(resampled)
    Image.new("RGB", (8, 8)).save(jobs[0].path)  # an image of another making, without a record
    with pytest.raises(EvaluationError, match=r"general-001_0.png \(no pea_evaluation record\)"):
        jobs_to_make(jobs)


def test_graphs_run_to_end_inside_a_callers_event_loop():
    import asyncio
    import threading

    from evaluation.graph import run_to_end

    async def where() -> str:
        return threading.current_thread().name

    async def caller() -> tuple[str, str]:  # a loop already running in this thread (a browser driver's, say)
        return run_to_end(where()), threading.current_thread().name

    def check(found: dict) -> None:  # on a thread with no loop of its own (this session's may run one)
        found["plain"] = run_to_end(where()) == threading.current_thread().name
        inner, outer = asyncio.run(caller())
        found["nested"] = inner != outer

    found: dict = {}
    thread = threading.Thread(target=check, args=(found,))
    thread.start()
    thread.join()
    assert found == {"plain": True, "nested": True}
