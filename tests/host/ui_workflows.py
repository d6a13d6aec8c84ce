"""UI-format workflows (what users drag into ComfyUI) made from the API-format twins in
workflows/api/, using the live node registry for widget order and socket types.

``PEA_WRITE_WORKFLOWS=1 python -m pytest tests/host/test_workflows.py`` rewrites workflows/*.json.
"""
from __future__ import annotations

import json
from pathlib import Path

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
TALL = {"LoadImage": 360, "PEAEncodePrompt": 260, "KSampler": 260, "PEALanguageCLIPScore": 260, "PreviewAny": 260}

FILES_SDXL_ZH = ("Model files:\n"
                 "- models/checkpoints/sd_xl_base_1.0.safetensors (any SDXL checkpoint)\n"
                 "- models/language_clip/chinese-clip-vit-huge-patch14/ (Hugging Face OFA-Sys/chinese-clip-vit-huge-patch14: "
                 "config.json, pytorch_model.bin, vocab.txt, tokenizer_config.json)\n"
                 "- models/pea_adapters/pea_sdxl_zh.safetensors (an SDXL PEA adapter for Chinese-CLIP, e.g. the official "
                 "pytorch_model.bin converted with python -m adapters.convert)")
FILES_FLUX = ("- models/language_clip/byt5-xxl-encoder.safetensors (the encoder of Hugging Face google/byt5-xxl, "
              "extracted with python -m adapters.encoders.extract; Load Language CLIP context_length 0 = 256 bytes)\n"
              "- models/pea_adapters/pea_multilingual_flux.safetensors (OPPOer/MultilingualFLUX.1-adapter "
              "diffusion_pytorch_model.bin, converted with python -m adapters.convert)\n"
              "- models/vae/ae.safetensors (the FLUX VAE, from black-forest-labs/FLUX.1-schnell)\n"
              "Commands: see the README's FLUX section.")
NOTES = {
    "01_sd15_chinese_text_to_image": (
        "SD1.5 text-to-image with a Chinese prompt through PEA.\n\nModel files:\n"
        "- models/checkpoints/v1-5-pruned-emaonly.safetensors (any SD1.5 checkpoint or fine-tune)\n"
        "- models/language_clip/chinese-clip-vit-huge-patch14/ (Hugging Face OFA-Sys/chinese-clip-vit-huge-patch14)\n"
        "- models/pea_adapters/pea_sd15_zh.safetensors (an SD1.5 PEA adapter trained behind Chinese-CLIP)"),
    "02_sdxl_chinese_text_to_image": (
        "SDXL text-to-image with a Chinese prompt and SDXL size conditioning (PEA Encode Prompt's size fields).\n\n"
        + FILES_SDXL_ZH),
    "03_sdxl_controlnet_canny": (
        "SDXL + ControlNet (canny) with a Chinese prompt: Apply ControlNet takes the PEA conditioning like any other."
        "\n\n" + FILES_SDXL_ZH + "\n- models/controlnet/controlnet-canny-sdxl-1.0.safetensors (an SDXL canny ControlNet)"
        "\n- input/pea_canny_source.png (any photo: load your own image)"),
    "04_sdxl_lora": (
        "SDXL + a LoRA with a Chinese prompt: the UNet is unchanged by PEA, so LoRAs apply as usual. The LoRA's "
        "trigger word is written between backticks (`ohwx style`): Apply PEA Adapter takes Load LoRA's clip output, "
        "so the span goes to the checkpoint's own CLIP-L + CLIP-G with the LoRA's text-encoder patches, and its "
        "tokens follow PEA's; the rest of the prompt, the pooled vector and the size conditioning come from PEA. "
        "Put your LoRA's trigger word between the backticks, or remove the span for a LoRA without one.\n\n"
        + FILES_SDXL_ZH.replace("(any SDXL checkpoint)", "(any SDXL checkpoint with its text encoders)")
        + "\n- models/loras/sdxl_style_lora.safetensors (any SDXL LoRA)"),
    "05_sdxl_lcm_lora_4_steps": (
        "SDXL + LCM-LoRA: 4 steps, cfg 1.5, sampler lcm, ModelSamplingDiscrete set to lcm.\n\n" + FILES_SDXL_ZH
        + "\n- models/loras/lcm-lora-sdxl.safetensors (latent-consistency/lcm-lora-sdxl)"),
    "06_sdxl_inpainting": (
        "SDXL inpainting with a Chinese prompt: paint the mask in Load Image (right click, Open in MaskEditor)."
        "\n\nModel files:\n- models/checkpoints/sd_xl_base_1.0_inpainting_0.1.safetensors (an SDXL inpainting checkpoint)\n"
        "- models/language_clip/chinese-clip-vit-huge-patch14/\n- models/pea_adapters/pea_sdxl_zh.safetensors\n"
        "- input/pea_inpaint_source.png (your image; transparent pixels are the mask)"),
    "12_sd15_lora_trigger_and_embedding": (
        "SD1.5 + a LoRA on MODEL and CLIP, with a Chinese prompt: the LoRA's trigger word is written between "
        "backticks (`ohwx style`) and the negative prompt holds embedding:EasyNegative. Apply PEA Adapter takes "
        "LoraLoader's clip output, so both go to the checkpoint's own CLIP (LoRA-patched, with ComfyUI's embeddings "
        "folder); the rest of each prompt goes through PEA.\n\nModel files:\n"
        "- models/checkpoints/v1-5-pruned-emaonly.safetensors (an SD1.5 checkpoint with its text encoder)\n"
        "- models/language_clip/chinese-clip-vit-huge-patch14/ (Hugging Face OFA-Sys/chinese-clip-vit-huge-patch14)\n"
        "- models/pea_adapters/pea_sd15_zh.safetensors\n"
        "- models/loras/sd15_style_lora.safetensors (any SD1.5 LoRA; put its trigger word between the backticks)\n"
        "- models/embeddings/EasyNegative.safetensors (any SD1.5 textual-inversion embedding)"),
    "07_sd15_english_vs_chinese_side_by_side": (
        "One seed, two paths: left, the English prompt through the checkpoint's own CLIP; right, the Chinese prompt "
        "through PEA. Both images are saved as one batch.\n\nModel files:\n"
        "- models/checkpoints/v1-5-pruned-emaonly.safetensors (an SD1.5 checkpoint with its text encoder)\n"
        "- models/language_clip/chinese-clip-vit-huge-patch14/ (Hugging Face OFA-Sys/chinese-clip-vit-huge-patch14)\n"
        "- models/pea_adapters/pea_sd15_zh.safetensors"),
    "08_sdxl_multilingual_three_languages": (
        "One multilingual adapter, three languages (Chinese, Russian, Korean), one seed; the images are batched "
        "into one Save Image.\n\nModel files:\n"
        "- models/checkpoints/sd_xl_base_1.0.safetensors\n"
        "- models/language_clip/xlm-roberta-large-ViT-H-14/ (laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k: "
        "open_clip_config.json, open_clip_pytorch_model.bin; plus a subfolder xlm-roberta-large/ with the config.json "
        "and tokenizer files of FacebookAI/xlm-roberta-large)\n"
        "- models/pea_adapters/pea_sdxl_multilingual.safetensors (an SDXL adapter trained behind that encoder)"),
    "09_flux_schnell_chinese": (
        "FLUX.1-schnell with a Chinese prompt through byT5-xxl and OPPO's multilingual FLUX adapter: 4 steps, cfg 1.0, "
        "no negative prompt (Conditioning Zero Out; cfg 1.0 skips it anyway), no guidance.\n\nModel files:\n"
        "- models/diffusion_models/flux1-schnell.safetensors (black-forest-labs/FLUX.1-schnell; "
        "models/unet works too)\n" + FILES_FLUX),
    "10_flux_dev_chinese": (
        "FLUX.1-dev with a Chinese prompt: Flux Guidance 3.5 (dev's distilled guidance; cfg stays 1.0), 20 steps. "
        "The adapter was distilled from schnell; dev reads the same text conditioning.\n\nModel files:\n"
        "- models/diffusion_models/flux1-dev.safetensors (black-forest-labs/FLUX.1-dev, gated: accept its licence; "
        "models/unet works too)\n" + FILES_FLUX),
    "11_sd15_chinese_best_of_four_by_clip_score": (
        "Four images of one Chinese prompt, ranked by Language CLIP Score: CLIPScore against the prompt in Chinese, "
        "read by Chinese-CLIP's own vision tower. Preview Any shows the ranking; all four are saved best first, and "
        "Image From Batch (index 0) saves the best one alone. The prompt is typed once, in the String (Multiline) "
        "node that feeds both PEA Encode Prompt and the score node, so the images are scored against the text they "
        "were made from. The ranking flags blank (near-constant) images and says when the prompt was longer than "
        "the CLIP reads.\n\nModel files:\n"
        "- models/checkpoints/v1-5-pruned-emaonly.safetensors (any SD1.5 checkpoint or fine-tune)\n"
        "- models/language_clip/chinese-clip-vit-huge-patch14/ (Hugging Face OFA-Sys/chinese-clip-vit-huge-patch14 "
        "as downloaded, with its vision tower and preprocessor_config.json: the adapter reads its text tower, the "
        "score node both towers)\n"
        "- models/pea_adapters/pea_sd15_zh.safetensors (an SD1.5 PEA adapter trained behind Chinese-CLIP)"),
}


def _inputs_in_order(spec: dict) -> list[tuple[str, list]]:
    return list(spec["input"].get("required", {}).items()) + list(spec["input"].get("optional", {}).items())


def _is_widget(kind) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO"


def api_to_ui(api: dict, object_info: dict, note: str) -> dict:
    """A UI workflow: nodes laid out left to right by depth, a Note node first."""
    ids = {key: n for n, key in enumerate(api, start=2)}
    depth: dict[str, int] = {}

    def level(key):
        if key not in depth:
            ups = [v[0] for v in api[key]["inputs"].values() if isinstance(v, list)]
            depth[key] = 1 + max((level(u) for u in ups), default=-1)
        return depth[key]

    nodes, links, rows = [], [], {}
    out_links: dict[tuple[int, int], list[int]] = {}
    for key, node in api.items():
        spec = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, (kind, *opts) in _inputs_in_order(spec):
            value = node["inputs"].get(name)
            if isinstance(value, list):  # a link
                src, slot = ids[value[0]], value[1]
                link_id = len(links) + 1
                link_type = object_info[api[value[0]]["class_type"]]["output"][slot]
                links.append([link_id, src, slot, ids[key], len(inputs), link_type])
                out_links.setdefault((src, slot), []).append(link_id)
                inputs.append({"name": name, "type": kind, "link": link_id})
                if _is_widget(kind):  # a widget fed by a link: its socket, its (unused) value kept in place
                    inputs[-1]["widget"] = {"name": name}
                    widgets.append((opts[0] or {}).get("default", "") if opts else "")
            elif _is_widget(kind):
                widgets.append(value if value is not None else (opts[0] or {}).get("default"))
                if opts and (opts[0] or {}).get("control_after_generate"):
                    widgets.append("fixed")
            else:  # an optional socket left unconnected
                inputs.append({"name": name, "type": kind, "link": None})
        col = level(key)
        height = TALL.get(node["class_type"], 180)
        y = rows.get(col, 60)
        rows[col] = y + height + 80
        nodes.append({"id": ids[key], "type": node["class_type"], "pos": [60 + 360 * col, y],
                      "size": [320, height], "flags": {}, "order": len(nodes) + 1, "mode": 0, "inputs": inputs,
                      "outputs": [], "properties": {"Node name for S&R": node["class_type"]},
                      "widgets_values": widgets})
    for node in nodes:
        spec = object_info[node["type"]]
        node["outputs"] = [{"name": name, "type": kind, "links": out_links.get((node["id"], slot), []), "slot_index": slot}
                           for slot, (name, kind) in enumerate(zip(spec["output_name"], spec["output"]))]
    nodes.insert(0, {"id": 1, "type": "Note", "pos": [60, -240], "size": [700, 200], "flags": {}, "order": 0, "mode": 0,
                     "inputs": [], "outputs": [], "properties": {}, "widgets_values": [note]})
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def api_workflows() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((WORKFLOWS / "api").glob("*.json"))}
