"""The evaluator end to end inside a real ComfyUI, on the SD1.5/SDXL stand-ins and tiny real-format
scorers, a MarianMT and InceptionV3 weights in torch-fidelity's layout."""
from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.standins import encoders as standins
from adapters.clip_score import load_clip_scorer
from tests.broken_training_files import interrupted_writes
from tests.evaluation_standins import write_inception_weights, write_random_images

pytestmark = pytest.mark.once  # the evaluator runs the stock nodes the workflow tests run on every release

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "evaluation"

PROMPTS = {
    "zh": [("general-001", "animals", "一只红色的猫坐在桌子上", "a red cat <i>sitting</i> on a table & more"),
           ("general-002", "scenes", "蓝色的天空和白色的云", "blue sky with white clouds")],
    "ru": [("general-001", "animals", "красная кошка сидит на столе", "a red cat <i>sitting</i> on a table & more")],
}


def write_prompt_set(folder: Path, prompts: dict = PROMPTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for lang, rows in prompts.items():
        lines = [json.dumps({"id": pid, "language": lang, "text": text, "en": en, "category": cat, "set": "general"},
                            ensure_ascii=False) for pid, cat, text, en in rows]
        (folder / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def eval_models(base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    models = base_dir / "models"
    made = {
        "checkpoint": models / "checkpoints" / "sd15_standin_clip.safetensors",
        "sdxl": models / "checkpoints" / "sdxl_standin.safetensors",
        "language_clip": models / "language_clip" / "chinese-clip-tiny",
        "packed": models / "language_clip" / "chinese-clip-tiny-text.safetensors",
        "adapter": models / "pea_adapters" / "pea_zh_sd15.safetensors",
        "sdxl_adapter": models / "pea_adapters" / "pea_zh_sdxl.safetensors",
        "marian": standins.make_marian(root / "opus-mt-tiny-mul-en"),
        "english_clip": standins.make_clip(root / "clip-en"),
        "multilingual_clip": standins.make_altclip(root / "altclip-multilingual"),
        "prompts": write_prompt_set(root / "prompts"),
    }
    if _has_torch_fidelity():
        made["inception"] = write_inception_weights(root / "weights-inception-random.pth")
        write_random_images(root / "reference", 3, seed=5)
        made["reference"] = root / "reference"
    return made


def _has_torch_fidelity() -> bool:
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        return False
    return True


def evaluate(m: dict, out: Path, *extra: str) -> int:
    from evaluation.evaluate import main

    return main(["--checkpoint", str(m["checkpoint"]), "--language-clip", str(m["language_clip"]),
                 "--adapter", str(m["adapter"]), "--prompt-set", str(m["prompts"]), "--translation-model",
                 str(m["marian"]), "--score-clip", f"ru={m['multilingual_clip']}", "--judge-clip",
                 str(m["multilingual_clip"]), "--english-clip", str(m["english_clip"]), "--images-per-prompt", "1",
                 "--steps", "2", "--width", "64", "--height", "64", "--cpu", "--out", str(out), *extra])


def fid_options(m: dict) -> list[str]:
    return ["--fid-reference", str(m["reference"]), "--inception-weights", str(m["inception"]),
            "--fid-dims", "64"] if "inception" in m else []


@pytest.fixture(scope="module")
def first_run(eval_models, tmp_path_factory) -> tuple[Path, str]:
    """The evaluator's first run (three methods, Chinese and Russian, FID where torch-fidelity is
    installed): its folder, which the tests only read, and what it printed."""
    out = tmp_path_factory.mktemp("evaluated") / "run"
    printed, errors = io.StringIO(), io.StringIO()
    with redirect_stdout(printed), redirect_stderr(errors):
        code = evaluate(eval_models, out, *fid_options(eval_models))
    assert code == 0, errors.getvalue()
    return out, printed.getvalue()


def test_evaluator_runs_end_to_end_then_resumes_without_generating(eval_models, first_run, tmp_path, capsys):
    out, printed = first_run
    fid = fid_options(eval_models)
    assert "9 new images (0 already there)" in printed
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    images = results["images"]
    assert sorted({(r["method"], r["language"]) for r in images}) == sorted(
        (m, lang) for m in ("english", "translate", "pea-pea_zh_sd15") for lang in ("zh", "ru")) and len(images) == 9

    # every score equals a CLIPScore of the saved PNG scored alone (the run scores batches: float32
    # rounding of a value near 100 differs by about 1e-5 between the two); Russian is scored by the
    # CLIP given for it, both languages also by the judge
    judge, en_clip = load_clip_scorer(eval_models["multilingual_clip"]), load_clip_scorer(eval_models["english_clip"])
    scorers = {"zh": load_clip_scorer(eval_models["language_clip"]), "ru": judge}
    translations = {lang: json.loads((out / "translations" / f"{lang}.json").read_text(encoding="utf-8"))["texts"]
                    for lang in ("zh", "ru")}
    for r in images:
        with Image.open(out / r["path"]) as im:
            assert im.size == (64, 64)
            used = json.loads(im.text["pea_evaluation"])["text"]
            pixels = im.convert("RGB")
        assert used == {"english": r["en"], "translate": translations[r["language"]][r["text"]]}.get(r["method"], r["text"])
        assert r["clip_score"] == pytest.approx(float(scorers[r["language"]].score([pixels], r["text"])[0]), abs=1e-4)
        assert r["clip_score_judge"] == pytest.approx(float(judge.score([pixels], r["text"])[0]), abs=1e-4)
        assert r["clip_score_en"] == pytest.approx(float(en_clip.score([pixels], r["en"])[0]), abs=1e-4)
    zh = {s["method"]: s for s in results["summary"] if (s["language"], s["category"]) == ("zh", "all")}
    pea = [r["clip_score"] for r in images if (r["method"], r["language"]) == ("pea-pea_zh_sd15", "zh")]
    assert zh["pea-pea_zh_sd15"]["images"] == 2
    assert zh["pea-pea_zh_sd15"]["clip_score"]["mean"] == pytest.approx(sum(pea) / 2)
    assert "all" not in {s["language"] for s in results["summary"]}, "languages scored by two CLIPs are not pooled"
    if fid:
        assert set(results["fid"]) == set(zh) and all(v["fid"] >= 0 for v in results["fid"].values())
    scored = results["scorers"]
    assert Path(scored["ru"]["score_clip"]["path"]) == eval_models["multilingual_clip"]
    assert scored["zh"]["score_clip"]["kind"] == "chinese_clip" and scored["zh"]["score_clip"]["truncated"] == []
    assert scored["ru"]["judge_clip"]["prompts"] == 1 and scored["zh"]["english_clip"]["token_limit"] == 77
    rows = results["comparisons"]["clip_score"]
    pairs = {(r["language"], r["method"], r["against"]): r for r in rows}
    assert sorted(pairs) == sorted((lang, "pea-pea_zh_sd15", b) for lang in ("zh", "ru") for b in ("translate", "english"))
    by_prompt = {(r["method"], r["id"]): r["clip_score"] for r in images if r["language"] == "zh"}
    assert pairs["zh", "pea-pea_zh_sd15", "translate"]["mean_difference"] == pytest.approx(
        sum(by_prompt["pea-pea_zh_sd15", p] - by_prompt["translate", p] for p in ("general-001", "general-002")) / 2)
    assert set(results["comparisons"]) == {"clip_score", "clip_score_judge", "clip_score_en"}

    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "| zh (Chinese) | english | translate | pea-pea_zh_sd15 |\n|---|---|---|---|\n| images | 2 | 2 | 2 |" in markdown
    assert "| animals | " in markdown and "| … difference from translate [95% interval], verdict | " in markdown
    assert "| ru | altclip-multilingual (altclip) | 0.0% | 0 of 1 (" in markdown
    assert "| zh | pea-pea_zh_sd15 | translate | 2 | " in markdown and "not distinguishable" in markdown
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "a red cat &lt;i&gt;sitting&lt;/i&gt; on a table &amp; more" in page and "<i>sitting</i>" not in page
    assert 'href="images/pea-pea_zh_sd15/zh/general-001_0.png"><img loading="lazy"' in page
    for lang in ("zh", "ru"):
        with Image.open(out / f"grid_{lang}.png") as grid:
            assert grid.width == 300 + 3 * 160

    out = Path(shutil.copytree(out, tmp_path / "run"))  # the resumes below change the folder: a copy of it
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("images/*/*/*.png")}
    interrupted_writes(out / "images" / "pea-pea_zh_sd15" / "zh" / "general-009_0.png")  # a run killed mid-write
    assert len(list(out.rglob("*.tmp"))) == 1
    assert evaluate(eval_models, out, *fid) == 0
    assert "0 new images (9 already there)" in capsys.readouterr().out
    assert not list(out.rglob("*.tmp")), "the next run removes what a killed one left"
    assert {p: p.stat().st_mtime_ns for p in out.glob("images/*/*/*.png")} == stamps

    assert evaluate(eval_models, out, "--images-per-prompt", "2", "--baselines", "none") == 0
    assert "3 new images (3 already there)" in capsys.readouterr().out, "a new seed adds images, the rest is kept"
    assert evaluate(eval_models, out, "--cfg", "3.5") == 2
    assert "holds images made with other settings or model files (sampling/cfg changed" in capsys.readouterr().err
    assert not list(out.rglob("*.tmp")), "no half-written file is left"


def test_report_page_opens_in_chromium_with_thumbnails_and_filters(first_run, browser):
    out, _ = first_run
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((out / "index.html").as_uri())
    images = page.locator("section img")
    assert images.count() == 9
    for i in range(images.count()):
        image = images.nth(i)
        assert image.get_attribute("loading") == "lazy"
        assert (out / image.get_attribute("src")).is_file() and image.get_attribute("src").startswith("thumbs/")
        assert (out / image.locator("xpath=..").get_attribute("href")).is_file(), "the full image on click"
    page.locator("section img").last.scroll_into_view_if_needed()
    page.wait_for_function("[...document.querySelectorAll('section img')].every(i => i.complete && i.naturalWidth > 0)")
    page.evaluate("window.scrollTo(0, 0)")  # the filter bar sticks to the top of the view
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "index.png"), full_page=True)

    page.select_option("#lang", "ru")
    assert page.locator('section[data-lang="zh"]').is_hidden() and page.locator('section[data-lang="ru"]').is_visible()
    page.select_option("#lang", "")
    page.select_option("#cat", "scenes")
    assert page.locator('table.prompts tr[data-cat="animals"]').first.is_hidden()
    assert page.locator('table.prompts tr[data-cat="scenes"]').is_visible()
    page.select_option("#cat", "")

    header = page.locator('section[data-lang="zh"] th[data-sort="diff"]').first
    header.click()
    column = header.evaluate("th => th.cellIndex")
    values = page.locator('section[data-lang="zh"] table.prompts tbody tr').evaluate_all(
        f"rows => rows.map(r => parseFloat(r.cells[{column}].dataset.value))")
    assert values == sorted(values, reverse=True) and len(values) == 2
    assert not errors, errors
    page.close()


def test_conditioning_follows_the_users_graph(eval_models, base_dir):
    """English and translation go through the checkpoint's CLIP (77 tokens of CLIP-L); PEA through
    Load Language CLIP -> Apply PEA Adapter -> PEA Encode Prompt (52 Chinese-CLIP positions), on
    ComfyUI's executor, whose cache keeps the loaded checkpoint from one graph to the next."""
    from evaluation.generate import Generator
    from evaluation.graph import Sampling, english_graph, pea_graph

    generator = Generator(eval_models["checkpoint"], eval_models["language_clip"])
    sampling = Sampling(64, 64, 2, 7.0, "euler", "normal")
    ((english, _),) = generator.executor.run(english_graph(generator.checkpoint, "a red cat", sampling, 0),
                                             "positive")[0]
    adapter = generator.adapter_name(eval_models["adapter"])
    graph = pea_graph(generator.checkpoint, generator.language_clip, adapter, "一只红色的猫", sampling, 0)
    ((pea, extra),) = generator.executor.run(graph, "positive")[0]
    assert english.shape == (1, 77, 768) and pea.shape == (1, 52, 768)
    assert extra["width"] == 64 and torch.isfinite(pea).all()
    messages = dict(generator.executor.messages)
    assert messages["execution_cached"]["nodes"] == ["checkpoint"], "the checkpoint is loaded once"
    assert "execution_success" in messages
    steps = []
    generator.executor.host.on_progress = lambda node, step, of: steps.append((node, step, of))
    (image,) = generator.executor.run(graph, "decode")
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    assert steps[-1] == ("sampler", 2, 2), "ComfyUI's progress reaches the host"
    cached = dict(generator.executor.messages)["execution_cached"]["nodes"]
    assert sorted(cached) == ["checkpoint", "language_clip", "pea_clip", "positive"]


def test_sdxl_adapter_alone(eval_models, tmp_path, capsys):
    from evaluation.evaluate import main

    out = tmp_path / "sdxl"
    assert main(["--checkpoint", str(eval_models["sdxl"]), "--language-clip", str(eval_models["language_clip"]),
                 "--adapter", str(eval_models["sdxl_adapter"]), "--baselines", "none", "--prompt-set",
                 str(eval_models["prompts"]), "--languages", "zh", "--limit", "1", "--steps", "1", "--width", "64",
                 "--height", "64", "--images-per-prompt", "1", "--cpu", "--out", str(out)]) == 0, capsys.readouterr().err
    (image,) = out.glob("images/pea-pea_zh_sdxl/zh/*.png")
    assert Image.open(image).size == (64, 64)


@pytest.mark.parametrize("change, message", [
    (lambda m, tmp: ["--translation-model", str(tmp / "opus-mt-zh-en")],
     "translation model folder not found: .*opus-mt-zh-en"),
    (lambda m, tmp: ["--languages", "xx"], "--languages: unknown language code 'xx'"),
    (lambda m, tmp: ["--score-clip", str(m["packed"])],
     "chinese-clip-tiny-text.safetensors is a single file: .*only its text tower.*vision tower"),
    (lambda m, tmp: ["--prompt-set", str(write_prompt_set(tmp / "bad", {"zh": [("p1", "c", "", "an English text")]}))],
     r"zh.jsonl:1 \(id 'p1'\): field 'text' is missing or empty"),
    (lambda m, tmp: ["--prompt-set", str(write_prompt_set(tmp / "long", {"zh": [("a" * 300, "c", "猫", "a cat")]}))],
     r"zh.jsonl:1: id is 300 characters long, at most 200 allowed"),
    (lambda m, tmp: ["--baselines", "translate", "--translation-model", "ru=" + str(m["marian"])],
     "no --translation-model for the Chinese prompts"),
    (lambda m, tmp: ["--languages", "ru", "--judge-clip", str(m["language_clip"])],
     r"--judge-clip: chinese-clip-tiny \(chinese_clip\) reads Chinese, not the Russian prompts; give a CLIP that "
     r"reads Russian: --judge-clip ru=FOLDER"),
])
def test_bad_input_is_named_before_anything_is_generated(eval_models, tmp_path, capsys, change, message):
    import re

    from evaluation.evaluate import main

    args = ["--checkpoint", str(eval_models["checkpoint"]), "--language-clip", str(eval_models["language_clip"]),
            "--adapter", str(eval_models["adapter"]), "--prompt-set", str(eval_models["prompts"]),
            "--score-clip", f"ru={eval_models['multilingual_clip']}", "--cpu", "--out", str(tmp_path / "out")]
    assert main(args + change(eval_models, tmp_path)) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out" / "images").exists()


def test_russian_prompts_with_only_a_chinese_clip_are_refused(eval_models, tmp_path, capsys):
    from evaluation.evaluate import main

    out = tmp_path / "out"
    assert main(["--checkpoint", str(eval_models["checkpoint"]), "--language-clip", str(eval_models["language_clip"]),
                 "--adapter", str(eval_models["adapter"]), "--prompt-set", str(eval_models["prompts"]),
                 "--languages", "ru", "--cpu", "--out", str(out)]) == 2
    assert ("error: --score-clip: chinese-clip-tiny (chinese_clip) reads Chinese, not the Russian prompts; give a "
            "CLIP that reads Russian: --score-clip ru=FOLDER") in capsys.readouterr().err
    assert not out.exists(), "refused before anything is written"



def test_a_changed_adapter_or_prompt_text_is_refused_or_remade(eval_models, tmp_path, capsys):
    """An adapter retrained in place (same size, other weights) and a prompt edited under its id are
    noticed by content: refused with what changed, remade with --remake-changed, translation included."""
    import shutil

    import safetensors.torch
    from safetensors import safe_open

    from evaluation.evaluate import main

    adapter = Path(shutil.copy(eval_models["adapter"], tmp_path / "pea_zh_sd15.safetensors"))
    prompts = write_prompt_set(tmp_path / "prompts", {"zh": [PROMPTS["zh"][0]]})
    out = tmp_path / "run"

    def evaluate(*extra: str) -> tuple[int, str]:
        code = main(["--checkpoint", str(eval_models["checkpoint"]),
                     "--language-clip", str(eval_models["language_clip"]), "--adapter", str(adapter),
                     "--prompt-set", str(prompts), "--baselines", "translate",
                     "--translation-model", str(eval_models["marian"]), "--images-per-prompt", "1", "--steps", "1",
                     "--width", "64", "--height", "64", "--cpu", "--out", str(out), *extra])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    code, said = evaluate()
    assert code == 0 and "2 new images (0 already there)" in said, said
    pea_image = out / "images" / "pea-pea_zh_sd15" / "zh" / "general-001_0.png"
    stamp = pea_image.stat().st_mtime_ns

    size = adapter.stat().st_size
    with safe_open(str(adapter), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    safetensors.torch.save_file({k: -v for k, v in tensors.items()}, str(adapter), metadata)
    assert adapter.stat().st_size == size, "retrained in place: the same size"
    code, said = evaluate()
    assert code == 2 and "pea-pea_zh_sd15" in said and "adapter/sha256 changed" in said, said
    assert pea_image.stat().st_mtime_ns == stamp, "refused before anything is made"
    code, said = evaluate("--remake-changed")
    assert code == 0 and "1 new images (1 already there)" in said, said

    old = json.loads((out / "translations" / "zh.json").read_text(encoding="utf-8"))["texts"]
    edited = PROMPTS["zh"][1][2]  # another text under the same id
    write_prompt_set(prompts, {"zh": [("general-001", "animals", edited, PROMPTS["zh"][0][3])]})
    code, said = evaluate()
    assert code == 2 and "general-001_0.png (text)" in said, said
    code, said = evaluate("--remake-changed")
    translations = json.loads((out / "translations" / "zh.json").read_text(encoding="utf-8"))["texts"]
    assert set(translations) == set(old) | {edited}, "translations are cached by their source text"
    remade = 1 + (translations[edited] != translations[PROMPTS["zh"][0][2]])  # a tiny model may say the same
    assert code == 0 and f"{remade} new images ({2 - remade} already there)" in said, said
    with Image.open(pea_image) as im:
        assert json.loads(im.text["pea_evaluation"])["text"] == edited
    assert evaluate()[1].startswith("0 new images (2 already there)")
