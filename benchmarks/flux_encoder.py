"""FLUX text side under ComfyUI's model management: a byT5-xxl-shaped encoder (random weights,
built from the real config) and the FLUX PEA adapter encode a prompt through the pack's CLIP,
exactly as *Load Language CLIP* → *Apply PEA Adapter* → *CLIP Text Encode* run it; then ComfyUI
offloads it.

    python -m benchmarks.flux_encoder                       # bf16 and fp8_e4m3fn storage, whole card
    python -m benchmarks.flux_encoder --vram-gib 6          # as on a card with 6 GiB free: partial load
    python -m benchmarks.flux_encoder --storage bf16 --json flux_encoder.json
    python -m benchmarks.flux_encoder --tiny                # a tiny byT5 on any device (checks the script)

Prints per weight storage: weight size, how much of it ComfyUI loaded to the GPU, the first
encode (weights moved included), a warm encode, peak GPU memory while encoding, and GPU memory
after ComfyUI unloads the encoder. ``--vram-gib N`` holds all but N GiB of the free VRAM in a
block of its own before loading, so ComfyUI's own budget decides what it loads and what it streams
per call (the ``comfy.ops`` layers). Random weights give meaningless conditioning; shapes, time
and memory are real.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

from comfy_runtime import import_comfy, load_pack

BYT5_XXL = dict(vocab_size=384, d_model=4672, d_kv=64, d_ff=12352, num_layers=36, num_decoder_layers=12,
                num_heads=64, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                relative_attention_max_distance=128, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
"""google/byt5-xxl's config.json (the encoder half is used)."""
BYT5_TINY = {**BYT5_XXL, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 1, "num_heads": 4}
PROMPT = "一盏红色的灯笼挂在古老的木门上，夜晚，细雨"


def build_encoder(config: dict, dtype: torch.dtype, device: torch.device):
    """A byT5 encoder with random weights in ``dtype``, built on ``device`` (fast on a GPU), then
    parked on the CPU as the loader leaves it."""
    import transformers

    from adapters.encoders.hf_text import HFTextEncoder

    config = transformers.T5Config(**config)
    with torch.device(device):
        model = transformers.T5EncoderModel._from_config(config, dtype=dtype)
    model = model.to("cpu").eval().requires_grad_(False)
    return HFTextEncoder(model, transformers.ByT5Tokenizer(), kind="t5", name="byt5 (random weights)",
                         path=Path("byt5"), hidden_size=config.d_model, context_length=256, attention_mask=False)


def gib(n: float) -> float:
    return round(n / 2**30, 3)


def hold_all_but(device: torch.device, free_gib: float) -> torch.Tensor | None:
    """Allocate all free VRAM but ``free_gib`` GiB, as if a smaller card or other models used it."""
    free, _ = torch.cuda.mem_get_info(device)
    spare = free - int(free_gib * 2**30)
    return torch.empty(spare, dtype=torch.uint8, device=device) if spare > 0 else None


def measure(pack, storage: str, config: dict, device: torch.device, vram_gib: float | None) -> dict:
    import comfy.model_management as mm

    from adapters import AdapterShape, PEAAdapter
    from adapters.encoders.weight_storage import weight_bytes
    from adapters.families import FAMILIES

    cuda = device.type == "cuda"
    flux = FAMILIES["flux"]
    language_clip = pack.nodes.language_clip
    options = language_clip.model_options("default", storage)
    encoder = build_encoder(config, options["dtype"], device)
    managed = language_clip.manage(encoder, options, language_clip.weight_dtype(storage, options["load_device"]))
    adapter = PEAAdapter(AdapterShape.for_family(flux, config["d_model"])).to(options["dtype"])
    clip = pack.nodes.pea_clip.adapter_clip(managed.clip, adapter)
    result = {"storage": storage, "encoder_gib": gib(weight_bytes(encoder)),
              "adapter_params": sum(p.numel() for p in adapter.parameters())}
    held = hold_all_but(device, vram_gib) if cuda and vram_gib is not None else None
    if cuda:
        torch.cuda.synchronize()
        result["before_encode_gib"] = gib(torch.cuda.memory_allocated(device) - (held.numel() if held is not None else 0))
        torch.cuda.reset_peak_memory_stats(device)
    for run in ("first_encode_s", "warm_encode_s"):
        start = time.perf_counter()
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
        if cuda:
            torch.cuda.synchronize()
        result[run] = round(time.perf_counter() - start, 3)
    tokens, extra = cond[0]
    assert tokens.shape == (1, 256, flux.context_dim) and extra["pooled_output"].shape == (1, flux.pooled_dim), (tokens.shape,)
    assert torch.isfinite(tokens).all() and torch.isfinite(extra["pooled_output"]).all()
    result["encoder_loaded_gib"] = gib(managed.patcher.loaded_size())
    result["partially_loaded"] = bool(managed.patcher.model.model_lowvram)
    if cuda:
        offset = held.numel() if held is not None else 0
        result["peak_encode_gib"] = gib(torch.cuda.max_memory_allocated(device) - offset)
        mm.unload_all_models()
        mm.soft_empty_cache()
        result["after_offload_gib"] = gib(torch.cuda.memory_allocated(device) - offset)
    mm.unload_all_models()
    del clip, managed, encoder, adapter, cond, tokens, extra, held
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", nargs="+", default=["bf16", "fp8_e4m3fn"], choices=["bf16", "fp8_e4m3fn", "fp8_e5m2"])
    p.add_argument("--vram-gib", type=float, help="leave only this much VRAM free before loading (a smaller card)")
    p.add_argument("--tiny", action="store_true", help="a tiny byT5 (2 layers, 32 wide): runs on the CPU too")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("error: this check needs a CUDA GPU (about 20 GB free for bf16); --tiny runs anywhere")
    import_comfy()
    pack = load_pack()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    config = BYT5_TINY if args.tiny else BYT5_XXL
    runs = [measure(pack, s, config, device, args.vram_gib) for s in args.storage]
    results = {"card": card, "prompt": PROMPT, "tiny": args.tiny, "vram_gib": args.vram_gib, "runs": runs}
    budget = f", {args.vram_gib} GiB VRAM left free" if args.vram_gib is not None else ""
    print(f"{card}: {'tiny' if args.tiny else 'byT5-xxl'}-shaped encoder (random weights) + FLUX PEA adapter, "
          f"256 byte tokens{budget}")
    for r in runs:
        line = (f"  {r['storage']:11s} weights {r['encoder_gib']:7.3f} GiB, {r['encoder_loaded_gib']:7.3f} loaded"
                f"{' (partially)' if r['partially_loaded'] else ''} | first encode {r['first_encode_s']:6.2f} s, "
                f"warm {r['warm_encode_s']:6.3f} s")
        if "peak_encode_gib" in r:
            line += f" | peak {r['peak_encode_gib']:6.2f} GiB | after offload {r['after_offload_gib']:5.2f} GiB"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
