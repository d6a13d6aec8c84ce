"""Caches of what frozen models compute: VAE latents of the images and the teacher's English
conditioning. Both are keyed by the checkpoint's name, kept in a cache folder (``--cache-dir``)
and optionally in memory (small datasets: the demo, tests).

Reading (``lookup``) is safe on the batch-prefetch thread; computing runs ComfyUI's models and
belongs on the main thread. Entries are written atomically under unique temp names, so processes
that happen to write the same entry (DDP ranks meeting one caption) never see a torn file; entries
every rank needs at start-up are written by rank 0 first (``Trainer``).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import safetensors.torch
import torch

from adapters.errors import PEAError
from adapters.file_format import atomic_write
from adapters.pickle_file import load_pickle
from training.data.sampling import Record


def cache_key(*parts: object) -> str:
    return hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()


class LatentCache:
    """VAE latents of one image in one bucket, scaled for the model (``process_latent_in``)."""

    def __init__(self, base_model, vae, cache_dir: Path | None = None, cache_key: str = "", memory: bool = False):
        self.base, self.vae = base_model, vae
        self.cache_dir, self.cache_key = cache_dir, cache_key
        self.memo: dict | None = {} if memory else None

    def _path(self, record: Record, bucket: tuple[int, int]) -> Path | None:
        if not self.cache_dir:
            return None
        key = cache_key(self.cache_key, record.image, bucket)
        return self.cache_dir / "latents" / key[:2] / f"{key}.pt"

    def lookup(self, record: Record, bucket: tuple[int, int]) -> torch.Tensor | None:
        """The cached latent, or None when it must be encoded."""
        if self.memo is not None and (record.image, bucket) in self.memo:
            return self.memo[(record.image, bucket)]
        path = self._path(record, bucket)
        if path is not None and path.is_file():
            latent = load_pickle(path, PEAError, f"Cached latent {path}")
            if self.memo is not None:
                self.memo[(record.image, bucket)] = latent
            return latent
        return None

    @torch.no_grad()
    def encode(self, record: Record, bucket: tuple[int, int], pixels: torch.Tensor) -> torch.Tensor:
        """Encode ``pixels`` ([H, W, 3] in [0, 1]) with the VAE and cache the latent."""
        latent = self.base.process_latent_in(self.vae.encode(pixels[None]).float())[0].cpu()
        if self.memo is not None:
            self.memo[(record.image, bucket)] = latent
        path = self._path(record, bucket)
        if path is not None:
            atomic_write(path, lambda tmp: torch.save(latent, tmp))
        return latent


TEACHER_TEXT = "literal text, first 77-token window"
"""How captions reach the teacher's CLIP; part of the cache key, so encodings made otherwise
(older versions weighted ComfyUI prompt syntax and chunked long captions) are never reused."""

EMBEDDING_NAME = re.compile(r"(?:^|(?<=[ \n]))(?=embedding:)")
"""Where ComfyUI's tokenizer (``SDTokenizer.tokenize_with_weights``) looks up a textual-inversion
file: ``embedding:`` at the start of the text or after a space or newline."""


def literal_prompt(caption: str) -> str:
    """``caption`` escaped so that ComfyUI's prompt parser, on every release, hands the CLIP
    tokenizer the literal text: every parenthesis gets a backslash (no weights; a backslash the
    caption holds stays, as the parser unescapes only backslash-parenthesis pairs), and a tab
    goes before each ``embedding:`` the parser would look up (the CLIP tokenizer reads a tab as
    the whitespace it is, so the tokens are the literal ones and no embedding file is read). NUL
    characters, which the tokenizer drops and the parser uses for its own escapes, are removed."""
    text = caption.replace("\0", "").replace("(", "\\(").replace(")", "\\)")
    return EMBEDDING_NAME.sub("\t", text)


def literal_tokens(clip, caption: str) -> dict:
    """ComfyUI tokens of ``caption`` read as literal text and cut to its first window of 77
    tokens per text encoder (start token, 75 tokens, end token, padding), as the authors' teacher
    reads captions (diffusers' CLIP tokenizer, ``truncation=True``). ComfyUI would weight prompt
    syntax, load textual inversions and chunk a long prompt into further 77-token windows; a
    caption describes an image as a whole, and a window past the first would condition the
    teacher on text its own training (and the authors') never saw."""
    return {name: windows[:1] for name, windows in clip.tokenize(literal_prompt(caption)).items()}


class TeacherText:
    """The base checkpoint's English conditioning of a caption: CLIPTextEncode's encoding of the
    literal caption, cut to 77 tokens (``literal_tokens``)."""

    def __init__(self, clip, cache_dir: Path | None = None, cache_key: str = "", memory: bool = False):
        self.clip = clip
        self.cache_dir = cache_dir
        self.cache_key = cache_key
        self.memo: dict[str, dict[str, torch.Tensor]] | None = {} if memory else None

    def _path(self, text: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = cache_key(self.cache_key, TEACHER_TEXT, text)
        return self.cache_dir / "teacher" / key[:2] / f"{key}.safetensors"

    def lookup(self, text: str) -> dict[str, torch.Tensor] | None:
        """The cached encoding of ``text``, or None when it must be computed."""
        if self.memo is not None and text in self.memo:
            return self.memo[text]
        path = self._path(text)
        if path is not None and path.is_file():
            out = safetensors.torch.load_file(str(path))
            if self.memo is not None:
                self.memo[text] = out
            return out
        return None

    @torch.no_grad()
    def encode(self, text: str) -> dict[str, torch.Tensor]:
        """``{"tokens": [1, L, C], "pooled": [1, P]}`` (pooled where the model has one), cached."""
        out = self.lookup(text)
        if out is not None:
            return out
        cond, extra = self.clip.encode_from_tokens_scheduled(literal_tokens(self.clip, text))[0]
        out = {"tokens": cond.float().cpu()}
        if extra.get("pooled_output") is not None:
            out["pooled"] = extra["pooled_output"].float().cpu()
        if self.memo is not None:
            self.memo[text] = out
        path = self._path(text)
        if path is not None:
            atomic_write(path, lambda tmp: safetensors.torch.save_file(out, tmp))
        return out

    def encode_batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stacked conditioning; captions of different lengths are repeated to a common
        length, as ComfyUI does when it batches conds (repetition leaves attention unchanged)."""
        return stack_conditioning([self.encode(t) for t in texts])


def stack_conditioning(encs: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher encodings of a batch as ``(tokens [B, L, C], pooled [B, P] or None)``; token
    sequences of different lengths are repeated to a common length, as ComfyUI batches conds."""
    import comfy.conds

    first, rest = comfy.conds.CONDCrossAttn(encs[0]["tokens"]), encs[1:]
    tokens = first.concat([comfy.conds.CONDCrossAttn(e["tokens"]) for e in rest])
    pooled = torch.cat([e["pooled"] for e in encs]) if "pooled" in encs[0] else None
    return tokens, pooled
