"""FLUX text side on a GPU: a byT5-xxl-shaped encoder (random weights, built from the real
config) and the FLUX PEA adapter encode a prompt through the pack's CLIP under ComfyUI's model
management; then ComfyUI offloads it.

    python benchmarks/flux_encoder.py                       # bf16 and fp8_e4m3fn storage
    python benchmarks/flux_encoder.py --storage bf16 --json flux_encoder.json

Prints per weight storage: weight size, the first encode (weights moved to the GPU included),
a warm encode, peak GPU memory while encoding, and GPU memory after ComfyUI unloads the
encoder. Random weights give meaningless conditioning; shapes, time and memory are real.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from training.comfy_runtime import import_comfy  # noqa: E402

BYT5_XXL = dict(vocab_size=384, d_model=4672, d_kv=64, d_ff=12352, num_layers=36, num_decoder_layers=12,
                num_heads=64, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                relative_attention_max_distance=128, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
"""google/byt5-xxl's config.json (the encoder half is used)."""
PROMPT = "一盏红色的灯笼挂在古老的木门上，夜晚，细雨"


def load_pack():
    """Import the pack as ComfyUI's custom-node loader does (a package from its folder)."""
    spec = importlib.util.spec_from_file_location("pea_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["pea_pack"] = module
    spec.loader.exec_module(module)
    return module


def build_encoder(storage: str, device: torch.device):
    """The byT5-xxl encoder with random weights, built on the GPU in bf16, then parked on the CPU
    as a loader leaves it."""
    import transformers

    from adapters.encoders.hf_text import HFTextEncoder
    from adapters.encoders.weight_storage import FP8_DTYPES, store_linear_weights

    config = transformers.T5Config(**BYT5_XXL)
    with torch.device(device):
        model = transformers.T5EncoderModel._from_config(config, dtype=torch.bfloat16)
    if storage in FP8_DTYPES:
        store_linear_weights(model, FP8_DTYPES[storage], torch.bfloat16)
    model = model.to("cpu").eval().requires_grad_(False)
    return HFTextEncoder(model, transformers.ByT5Tokenizer(), kind="t5", name="byt5-xxl (random weights)",
                         path=Path("byt5-xxl"), hidden_size=config.d_model, context_length=256,
                         attention_mask=False)


def gib(n: float) -> float:
    return round(n / 2**30, 2)


def measure(pack, storage: str, device: torch.device) -> dict:
    import comfy.model_management as mm

    from adapters import AdapterShape, PEAAdapter
    from adapters.encoders.weight_storage import weight_bytes
    from adapters.families import FAMILIES

    encoder = build_encoder(storage, device)
    flux = FAMILIES["flux"]
    adapter = PEAAdapter(AdapterShape.for_family(flux, encoder.hidden_size))
    options = pack.nodes.language_clip.model_options("default", "bf16")
    clip = pack.nodes.pea_clip.make_pea_clip(encoder, adapter, options)
    result = {"storage": storage, "encoder_gib": gib(weight_bytes(encoder)),
              "adapter_params": sum(p.numel() for p in adapter.parameters())}
    torch.cuda.synchronize()
    result["before_encode_gib"] = gib(torch.cuda.memory_allocated(device))
    torch.cuda.reset_peak_memory_stats(device)
    for run in ("first_encode_s", "warm_encode_s"):
        start = time.perf_counter()
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
        torch.cuda.synchronize()
        result[run] = round(time.perf_counter() - start, 3)
    tokens, extra = cond[0]
    assert tokens.shape == (1, 256, flux.context_dim) and extra["pooled_output"].shape == (1, flux.pooled_dim), (tokens.shape,)
    assert torch.isfinite(tokens).all() and torch.isfinite(extra["pooled_output"]).all()
    result["peak_encode_gib"] = gib(torch.cuda.max_memory_allocated(device))
    result["loaded_gib"] = gib(torch.cuda.memory_allocated(device))
    mm.unload_all_models()
    mm.soft_empty_cache()
    result["after_offload_gib"] = gib(torch.cuda.memory_allocated(device))
    del clip, encoder, adapter, cond, tokens, extra
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", nargs="+", default=["bf16", "fp8_e4m3fn"], choices=["bf16", "fp8_e4m3fn", "fp8_e5m2"])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: this check needs a CUDA GPU (about 20 GB free for bf16)")
    import_comfy(cpu=False)
    pack = load_pack()
    device = torch.device("cuda")
    card = torch.cuda.get_device_name(device)
    results = {"card": card, "prompt": PROMPT, "runs": [measure(pack, s, device) for s in args.storage]}
    print(f"{card}: byT5-xxl-shaped encoder (random weights) + FLUX PEA adapter, 256 byte tokens")
    for r in results["runs"]:
        print(f"  {r['storage']:11s} weights {r['encoder_gib']:6.2f} GiB | first encode {r['first_encode_s']:6.2f} s, "
              f"warm {r['warm_encode_s']:6.3f} s | peak {r['peak_encode_gib']:6.2f} GiB | "
              f"after offload {r['after_offload_gib']:5.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
