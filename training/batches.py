"""From sampled records to the step's ``Batch``: cached latents, cached teacher encodings and the
language encoder's token ids, on the training device. Images that fail to load are skipped and
counted once (and not tried again)."""
from __future__ import annotations

import torch

from .caching import LatentCache, TeacherText
from .data import Record, SkipCounter
from .distill import Batch
from .images import IMAGE_ERRORS


class BatchMaker:
    def __init__(self, latents: LatentCache, teacher: TeacherText, tokenize, skipped: SkipCounter, device):
        self.latents, self.teacher, self.tokenize = latents, teacher, tokenize
        self.skipped, self.device = skipped, device

    def __call__(self, bucket: tuple[int, int], records: list[Record], sample_ids: list[int]) -> Batch | None:
        """The batch of the records whose image loads; None when none does."""
        kept, latents, recs = [], [], []
        for record, sid in zip(records, sample_ids):
            if record in self.skipped:
                continue
            try:
                latents.append(self.latents(record, bucket))
            except IMAGE_ERRORS as e:
                self.skipped.add(record, e)
                continue
            kept.append(sid)
            recs.append(record)
        if not kept:
            return None
        tokens, pooled = self.teacher.encode_batch([r.en if (r.en and not r.native) else "" for r in recs])
        return Batch(
            latents=torch.stack(latents).to(self.device), teacher_tokens=tokens.to(self.device),
            teacher_pooled=None if pooled is None else pooled.to(self.device),
            ids=self.tokenize([r.text for r in recs]).to(self.device),
            kd_mask=torch.tensor([0.0 if r.native else 1.0 for r in recs], device=self.device),
            pixel_size=bucket, sample_ids=kept)
