"""One package identity per process: an error a node raises is the class the commands catch, so
the evaluator and the trainer end on their clean "error: ..." line, not a traceback."""
from __future__ import annotations

import sys

import pytest

import adapters
from evaluation.errors import EvaluationError
from evaluation.graph import GraphExecutor, Sampling, pea_graph

pytestmark = pytest.mark.once  # the pack's own import logic; nothing release-specific

SD15 = "sd15_standin_clip.safetensors"
SDXL_ADAPTER = "pea_zh_sdxl.safetensors"
SAMPLING = Sampling(64, 64, 1, 1.0, "euler", "normal")


def apply_sdxl_adapter_to_sd15(pack) -> None:
    """Run Apply PEA Adapter (an SDXL adapter on an SD1.5 model) on ComfyUI's executor, as the evaluator does."""
    GraphExecutor().run(pea_graph(SD15, "chinese-clip-tiny", SDXL_ADAPTER, "一只猫", SAMPLING, 0), "pea_clip")


def test_the_nodes_use_the_commands_adapters(pack):
    node_module = sys.modules[f"{pack.__name__}.nodes.pea_clip"]
    assert node_module.IncompatibleError is adapters.IncompatibleError
    assert sys.modules[f"{pack.__name__}.adapters.errors"] is sys.modules["adapters.errors"]
    with pytest.raises(adapters.PEAError, match="Adapter 'pea_zh_sdxl.safetensors' is made for"):
        apply_sdxl_adapter_to_sd15(pack)


def test_a_node_error_ends_the_evaluator_cleanly(pack, base_dir, tmp_path, capsys):
    from evaluation.evaluate import main

    models = base_dir / "models"
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "zh.jsonl").write_text('{"id": "p1", "language": "zh", "text": "一只猫", "en": "a cat", '
                                      '"category": "animals", "set": "general"}\n', encoding="utf-8")
    code = main(["--checkpoint", str(models / "checkpoints" / SD15),
                 "--language-clip", str(models / "language_clip" / "chinese-clip-tiny"),
                 "--adapter", str(models / "pea_adapters" / SDXL_ADAPTER), "--baselines", "none",
                 "--prompt-set", str(prompts), "--steps", "1", "--width", "64", "--height", "64", "--cpu",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error: Adapter 'pea_zh_sdxl.safetensors' is made for" in err and "Traceback" not in err


def test_a_node_error_ends_the_trainer_cleanly(pack, monkeypatch):
    from training import train_adapter

    monkeypatch.setattr(train_adapter, "train", lambda parser, args: apply_sdxl_adapter_to_sd15(pack))
    with pytest.raises(SystemExit) as stop:
        train_adapter.main([])
    assert str(stop.value).startswith("error: Adapter 'pea_zh_sdxl.safetensors' is made for")


def test_comfyuis_refusal_names_the_node_and_the_value(pack):
    graph = pea_graph("missing.safetensors", "chinese-clip-tiny", SDXL_ADAPTER, "一只猫", SAMPLING, 0)
    with pytest.raises(EvaluationError, match=r"ComfyUI refused the graph: CheckpointLoaderSimple \(node checkpoint\): "
                                              r"Value not in list: .*missing.safetensors"):
        GraphExecutor().run(graph, "decode")


def test_a_stock_nodes_failure_names_the_node(pack, base_dir, tmp_path):
    import folder_paths

    whole = (base_dir / "models" / "checkpoints" / SD15).read_bytes()
    (tmp_path / "cut_checkpoint.safetensors").write_bytes(whole[: len(whole) // 3])
    folder_paths.add_model_folder_path("checkpoints", str(tmp_path))
    graph = pea_graph("cut_checkpoint.safetensors", "chinese-clip-tiny", SDXL_ADAPTER, "一只猫", SAMPLING, 0)
    with pytest.raises(EvaluationError, match=r"^CheckpointLoaderSimple \(node checkpoint\) failed: \w+: .+"):
        GraphExecutor().run(graph, "decode")
