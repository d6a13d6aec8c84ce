"""Caches of what frozen models compute: VAE latents of the images and the teacher's English
conditioning. Both are keyed by the checkpoint's name, kept in a cache folder (``--cache-dir``)
and optionally in memory (small datasets: the demo, tests)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import safetensors.torch
import torch

from .data import Record, load_image


def cache_key(*parts: object) -> str:
    return hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()


class LatentCache:
    """VAE latents of one image in one bucket, scaled for the model (``process_latent_in``)."""

    def __init__(self, base_model, vae, cache_dir: Path | None = None, cache_key: str = "", memory: bool = False):
        self.base, self.vae = base_model, vae
        self.cache_dir, self.cache_key = cache_dir, cache_key
        self.memo: dict | None = {} if memory else None

    def __call__(self, record: Record, bucket: tuple[int, int]) -> torch.Tensor:
        if self.memo is None:
            return self._cached(record, bucket)
        key = (record.image, bucket)
        if key not in self.memo:
            self.memo[key] = self._cached(record, bucket)
        return self.memo[key]

    @torch.no_grad()
    def _cached(self, record: Record, bucket: tuple[int, int]) -> torch.Tensor:
        path = None
        if self.cache_dir:
            key = cache_key(self.cache_key, record.image, bucket)
            path = self.cache_dir / "latents" / key[:2] / f"{key}.pt"
            if path.is_file():
                return torch.load(path, weights_only=True)
        pixels = load_image(record, bucket)[None]
        latent = self.base.process_latent_in(self.vae.encode(pixels).float())[0].cpu()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(latent, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
        return latent


class TeacherText:
    """The base checkpoint's English conditioning, exactly as CLIPTextEncode makes it."""

    def __init__(self, clip, cache_dir: Path | None = None, cache_key: str = "", memory: bool = False):
        self.clip = clip
        self.cache_dir = cache_dir
        self.cache_key = cache_key
        self.memo: dict[str, dict[str, torch.Tensor]] | None = {} if memory else None

    @torch.no_grad()
    def _compute(self, text: str) -> dict[str, torch.Tensor]:
        cond, extra = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))[0]
        out = {"tokens": cond.float().cpu()}
        if extra.get("pooled_output") is not None:
            out["pooled"] = extra["pooled_output"].float().cpu()
        return out

    def encode(self, text: str) -> dict[str, torch.Tensor]:
        if self.memo is None:
            return self._cached(text)
        if text not in self.memo:
            self.memo[text] = self._cached(text)
        return self.memo[text]

    def _cached(self, text: str) -> dict[str, torch.Tensor]:
        if self.cache_dir is None:
            return self._compute(text)
        key = cache_key(self.cache_key, text)
        path = self.cache_dir / "teacher" / key[:2] / f"{key}.safetensors"
        if path.is_file():
            return safetensors.torch.load_file(str(path))
        out = self._compute(text)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        safetensors.torch.save_file(out, str(tmp))
        tmp.replace(path)
        return out

    def encode_batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stacked conditioning; captions of different lengths are repeated to a common
        length, as ComfyUI does when it batches conds (repetition leaves attention unchanged)."""
        import comfy.conds

        encs = [self.encode(t) for t in texts]
        first, rest = comfy.conds.CONDCrossAttn(encs[0]["tokens"]), encs[1:]
        tokens = first.concat([comfy.conds.CONDCrossAttn(e["tokens"]) for e in rest])
        pooled = torch.cat([e["pooled"] for e in encs]) if "pooled" in encs[0] else None
        return tokens, pooled
