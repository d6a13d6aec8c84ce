"""The pack in a real ComfyUI server: node registry, full graphs to images, errors that leave it running."""
from __future__ import annotations

import pytest

NODES = {"PEALoadLanguageCLIP": "Load Language CLIP", "PEAApplyAdapter": "Apply PEA Adapter",
         "PEAEncodePrompt": "PEA Encode Prompt"}


def pea_graph(ckpt: str, adapter: str, clip_name: str = "chinese-clip-tiny", batch: int = 1,
              positive: str = "一只红色的猫坐在桌子上，油画风格", negative: str = "模糊，低质量",
              prefix: str = "pea") -> dict:
    """The acceptance graph: checkpoint, language CLIP, adapter, PEA positive, stock negative."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "PEALoadLanguageCLIP",
              "inputs": {"clip_name": clip_name, "dtype": "default", "device": "default", "context_length": 0}},
        "3": {"class_type": "PEAApplyAdapter",
              "inputs": {"language_clip": ["2", 0], "adapter_name": adapter, "model": ["1", 0]}},
        "4": {"class_type": "PEAEncodePrompt", "inputs": {"clip": ["3", 0], "text": positive}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 0], "text": negative}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "7": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
                         "seed": 7, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


def error_message(entry: dict) -> str:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return data["exception_message"]
    raise AssertionError(f"no execution_error in {entry['status']}")


def test_object_info_lists_the_three_nodes(server):
    info = server.get("/object_info")
    for node_id, display in NODES.items():
        assert info[node_id]["display_name"] == display
        assert info[node_id]["category"] == info["CLIPTextEncode"]["category"] + "/PEA"
    assert info["PEAApplyAdapter"]["output"] == ["CLIP"]
    assert "chinese-clip-tiny" in info["PEALoadLanguageCLIP"]["input"]["required"]["clip_name"][0]


@pytest.mark.parametrize("ckpt,adapter,batch", [
    ("sd15_standin.safetensors", "pea_zh_sd15.safetensors", 1),
    ("sdxl_standin.safetensors", "pea_zh_sdxl.safetensors", 1),
    ("sdxl_standin.safetensors", "official/pytorch_model.bin", 2),
])
def test_graph_writes_images(server, ckpt, adapter, batch):
    prefix = f"pea_{ckpt.split('_')[0]}_{batch}"
    entry = server.run(pea_graph(ckpt, adapter, batch=batch, prefix=prefix))
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = entry["outputs"]["9"]["images"]
    assert len(images) == batch
    for image in images:
        path = server.base_dir / "output" / image["subfolder"] / image["filename"]
        assert path.is_file() and path.stat().st_size > 0 and image["filename"].startswith(prefix)


def test_extra_model_paths_yaml_is_respected(server):
    info = server.get("/object_info")
    assert "extra-chinese-clip" in info["PEALoadLanguageCLIP"]["input"]["required"]["clip_name"][0]
    assert "extra_zh_sd15.safetensors" in info["PEAApplyAdapter"]["input"]["required"]["adapter_name"][0]
    entry = server.run(pea_graph("sd15_standin.safetensors", "extra_zh_sd15.safetensors",
                                 clip_name="extra-chinese-clip", prefix="pea_extra"))
    assert entry["status"]["status_str"] == "success", entry["status"]


@pytest.mark.parametrize("adapter,clip_name,ckpt,message", [
    ("bad/truncated.safetensors", "chinese-clip-tiny", "sdxl_standin.safetensors",
     "truncated.safetensors is not a readable safetensors file"),
    ("bad/not_a_state_dict.bin", "chinese-clip-tiny", "sdxl_standin.safetensors",
     "not_a_state_dict.bin holds a list, not a state dict"),
    ("pea_zh_sd15.safetensors", "chinese-clip-tiny", "sdxl_standin.safetensors",
     "is made for SD1.5 .* needs 2048-d context and a 1280-d pooled vector"),
    ("bad/wide_sdxl.safetensors", "chinese-clip-tiny", "sdxl_standin.safetensors",
     "expects 64-d token states .* gives 32-d states"),
    ("pea_zh_sdxl.safetensors", "empty", "sdxl_standin.safetensors",
     "Language encoder folder .*empty is empty"),
    ("bad/nan_sdxl.safetensors", "chinese-clip-tiny", "sdxl_standin.safetensors",
     r"nan_sdxl.safetensors: tensor 'projector.0.weight' holds NaN values. The file is damaged"),
    ("pea_zh_sdxl.safetensors", "hostile-text.safetensors", "sdxl_standin.safetensors",
     r"hostile-text.safetensors carries a file named '(\.\./)+.*/custom_nodes/pea_evil.py': .* The file is refused"),
    ("bad/huge_sd15.safetensors", "chinese-clip-tiny", "sd15_standin.safetensors",
     r"PEA conditioning for prompt '.+' contains NaN/inf: the adapter 'huge_sd15.safetensors' produced non-finite "
     r"values from the finite token states of the language CLIP 'chinese-clip-tiny'"),
])
def test_bad_inputs_fail_clearly_and_server_keeps_running(server, adapter, clip_name, ckpt, message):
    import re

    entry = server.run(pea_graph(ckpt, adapter, clip_name=clip_name))
    assert entry["status"]["status_str"] == "error"
    assert re.search(message, error_message(entry)), error_message(entry)
    assert server.alive()
    assert not (server.base_dir / "custom_nodes" / "pea_evil.py").exists()


def test_the_next_good_prompt_runs_after_non_finite_conditioning(server):
    """A prompt that would have saved a black image fails; the same graph with a sound adapter then works."""
    bad = server.run(pea_graph("sd15_standin.safetensors", "bad/huge_sd15.safetensors", prefix="pea_huge"))
    assert bad["status"]["status_str"] == "error" and "contains NaN/inf" in error_message(bad)
    assert not list((server.base_dir / "output").glob("pea_huge*"))
    good = server.run(pea_graph("sd15_standin.safetensors", "pea_zh_sd15.safetensors", prefix="pea_after_huge"))
    assert good["status"]["status_str"] == "success", good["status"]
    assert len(good["outputs"]["9"]["images"]) == 1


def test_missing_folder_is_refused_at_validation(server):
    status, body = server.queue(pea_graph("sdxl_standin.safetensors", "pea_zh_sdxl.safetensors",
                                          clip_name="no-such-model"))
    assert status == 400
    details = str(body["node_errors"]["2"])
    assert "Language CLIP 'no-such-model' not found. Searched:" in details and "language_clip" in details
    status, body = server.queue(pea_graph("sdxl_standin.safetensors", "missing.safetensors"))
    assert status == 400 and "PEA adapter 'missing.safetensors' not found" in str(body["node_errors"]["3"])
    assert server.alive()
