"""Loading the text tower of a two-tower folder: what Load Language CLIP reads now (only the
text tower's tensors) against reading the whole model and dropping its vision tower, as the pack
did before. CPU only; no ComfyUI needed.

    python -m benchmarks.two_tower_load                  # a Chinese-CLIP with a ViT-L/14 vision tower, bf16
    python -m benchmarks.two_tower_load --vision huge    # ViT-H/14, as OFA-Sys/chinese-clip-vit-huge-patch14
    python -m benchmarks.two_tower_load --dtype float32  # as on the CPU

Builds the folder once in a temporary directory (random weights; a small BERT text tower, the
real vision tower's config), then loads it in fresh processes, alternating the two ways, and
prints each one's load time (imports excluded) and peak resident memory (the process's, imports
included) and their ratio. The folder stays in the page cache, so the times are warm-cache times.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

VISION = {
    "large": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                  image_size=224, patch_size=14),
    "huge": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                 image_size=224, patch_size=14),
}
LOADERS = {
    "text tower only (now)": "load_language_encoder(FOLDER, dtype=DTYPE)",
    "whole model (before)": "transformers.ChineseCLIPModel.from_pretrained(FOLDER, dtype=DTYPE).text_model",
}
MEASURE = """
import json, sys, time
import torch, transformers
from adapters import load_language_encoder
transformers.ChineseCLIPModel, transformers.ChineseCLIPTextModel, transformers.BertTokenizerFast  # lazy imports
FOLDER, DTYPE = {folder!r}, torch.{dtype}
start = time.perf_counter()
{load}
seconds = time.perf_counter() - start
try:
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
except ImportError:  # Windows
    import psutil
    peak = psutil.Process().memory_info().peak_wset
print(json.dumps({{"seconds": seconds, "peak_bytes": peak}}))
"""


BUILD = """
import sys
import transformers
from adapters.demo_files import bert_tokenizer
tokenizer = bert_tokenizer()
text = transformers.ChineseCLIPTextConfig(vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=4,
                                          num_attention_heads=4, intermediate_size=1024,
                                          pad_token_id=tokenizer.pad_token_id)
config = transformers.ChineseCLIPConfig(text_config=text.to_dict(), vision_config={vision!r}, projection_dim=1024)
transformers.ChineseCLIPModel(config).save_pretrained({folder!r})
tokenizer.save_pretrained({folder!r})
"""


def build(folder: Path, vision: dict) -> int:
    """A Chinese-CLIP folder with random weights, built in a process of its own (Linux carries a
    process's peak memory over into the programs it starts); returns the weight file's size."""
    code = BUILD.format(vision=vision, folder=str(folder))
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return (folder / "model.safetensors").stat().st_size


def measure(folder: Path, load: str, dtype: str) -> dict:
    code = MEASURE.format(folder=str(folder), load=load, dtype=dtype)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vision", choices=VISION, default="large")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help="the dtype loaded in (Load Language CLIP's on a GPU: bf16/fp16; on the CPU: fp32)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "chinese-clip"
        size = build(folder, VISION[args.vision])
        runs = {name: [] for name in LOADERS}
        for _ in range(args.repeats):
            for name, load in LOADERS.items():
                runs[name].append(measure(folder, load, args.dtype))
    print(f"Chinese-CLIP folder, ViT-{args.vision[0].upper()}/14 vision tower: model.safetensors {size / 2**30:.2f} GiB "
          f"loaded in {args.dtype} (median of {args.repeats} fresh processes each)")
    medians = {}
    for name, results in runs.items():
        medians[name] = (statistics.median(r["seconds"] for r in results),
                         statistics.median(r["peak_bytes"] for r in results))
        print(f"  {name:22s} {medians[name][0]:6.2f} s, peak resident {medians[name][1] / 2**30:5.2f} GiB")
    (now_s, now_b), (before_s, before_b) = medians.values()
    print(f"  now / before: {now_s / before_s:.2f}x time, {now_b / before_b:.2f}x peak memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
