"""Run under torchrun by test_training: a few demo-world steps with DDP (gloo on CPU), caching latents
and teacher encodings on disk (every rank reads and writes the cache folder)."""
import sys
from dataclasses import replace
from pathlib import Path

from training.comfy_runtime import import_comfy

import_comfy(cpu=True)

from adapters import load_language_encoder  # noqa: E402
from training.data import read_manifest  # noqa: E402
from training.distributed import DistInfo  # noqa: E402
from training.loop import Trainer  # noqa: E402
from training.miniworld.demo import demo_config  # noqa: E402
from training.miniworld.tiny_base import tiny_sd15_parts  # noqa: E402

manifest, encoder_dir, out, batch, cache = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
cfg = replace(demo_config(out, 4, 0), batch_size=batch, progress=False, cache_dir=cache, memory_cache=False,
              log_every=1, save_every=0)
Trainer(cfg, tiny_sd15_parts("demo"), load_language_encoder(encoder_dir), read_manifest(manifest),
        DistInfo.from_env()).run()
