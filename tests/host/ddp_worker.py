"""A few demo-world steps, caching latents and teacher encodings on disk: run under torchrun by
test_training (DDP over gloo on CPU; every rank reads and writes the cache folder), and in the test
process itself as the one-process reference."""
import sys
from dataclasses import replace
from pathlib import Path


def train(manifest: str, encoder_dir: str, out: Path, batch: int, cache: Path, dist=None) -> None:
    from adapters import load_language_encoder
    from training.data.sampling import read_manifest
    from training.loop import Trainer
    from training.miniworld.demo import demo_config
    from training.miniworld.tiny_base import tiny_sd15_parts

    cfg = replace(demo_config(out, 4, 0), batch_size=batch, progress=False, cache_dir=cache, memory_cache=False,
                  log_every=1, save_every=0)
    Trainer(cfg, tiny_sd15_parts("demo"), load_language_encoder(encoder_dir), read_manifest(manifest), dist).run()


if __name__ == "__main__":
    from comfy_runtime import import_comfy

    import_comfy(cpu=True)
    from training.distributed import DistInfo

    manifest, encoder_dir, out, batch, cache = sys.argv[1:6]
    train(manifest, encoder_dir, Path(out), int(batch), Path(cache), DistInfo.from_env())
