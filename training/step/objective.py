"""The PEA distillation objective, as the authors' code trains (hybrid mode), per sample:

    (1 - kd) * λ_SD * L_SD  +  kd * (λ_L * L_LKD + λ_F * L_FKD + λ_T * L_text)

``kd`` is 1 for a parallel sample (a caption with a trustworthy English twin) and 0 for a native
one (culture-specific, no English twin): parallel samples learn from the teacher only (logit and
feature KD), native samples from their image only (the denoising loss). ``sd_on_parallel`` adds
``λ_SD * L_SD`` to parallel samples too: not the method, but this project's reading of the
"fine-tuning + KD" rows of the paper's ablation (Table 2), which does not say which samples get
``L_SD`` there (no ablation code was released). The batch loss is the mean of the per-sample losses, so it is the same
whatever the split of a global batch over processes. ``L_text`` (the adapter's tokens against the
teacher's English tokens, no UNet: a GlueGen-style baseline) has weight 0 in PEA.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from adapters.errors import IncompatibleError


@dataclass(frozen=True)
class LossWeights:
    sd: float = 1.0
    logit: float = 1.0
    feature: float = 0.1
    text: float = 0.0
    sd_on_parallel: bool = False
    """Also give parallel samples ``λ_SD * L_SD`` (this project's reading of the paper's ablation
    rows; PEA leaves it off)."""

    @property
    def needs_unet(self) -> bool:
        """False for text-space alignment alone, which never runs the UNet."""
        return bool(self.sd or self.logit or self.feature)

    def terms(self, native: bool, parallel: bool) -> list[str]:
        """The terms with a non-zero weight that some sample gets, given whether the data has
        native and parallel samples; empty when nothing can train."""
        sd = self.sd and (native or (parallel and self.sd_on_parallel))
        kd = {"logit KD": self.logit, "feature KD": self.feature, "text alignment": self.text}
        return (["L_SD"] if sd else []) + [name for name, w in kd.items() if w and parallel]


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample: ``[B, ...]`` -> ``[B]`` in fp32.

    The difference stays in the inputs' dtype (bf16 features keep no fp32 copy for backward);
    the squares are summed in fp32."""
    diff = (a - b).flatten(1)
    return torch.linalg.vector_norm(diff, dim=1, dtype=torch.float32).square() / diff.shape[1]


def prediction_target(model_sampling, sigma: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """What the model should output (eps, v, ...) so that its denoised estimate is ``clean``.

    ComfyUI's ``calculate_denoised`` is affine in the model output: ``denoised = a - b * out``;
    both parts are read from the model's own sampling object, so any parametrisation works.
    """
    at_zero = model_sampling.calculate_denoised(sigma, torch.zeros_like(noisy), noisy)
    slope = at_zero - model_sampling.calculate_denoised(sigma, torch.ones_like(noisy), noisy)
    return (at_zero - clean) / slope


def text_alignment(s_tokens: torch.Tensor, s_pooled: torch.Tensor | None,
                   t_tokens: torch.Tensor, t_pooled: torch.Tensor | None) -> torch.Tensor:
    """Per-sample MSE between the adapter's and the teacher's text conditioning, token by token."""
    if s_tokens.shape[1] != t_tokens.shape[1]:
        raise IncompatibleError(
            f"text-space alignment compares token by token: the language encoder gives {s_tokens.shape[1]} "
            f"tokens, the teacher {t_tokens.shape[1]}; set the encoder's context length to {t_tokens.shape[1]}")
    loss = per_sample_mse(s_tokens, t_tokens)
    if s_pooled is not None and t_pooled is not None:
        loss = loss + per_sample_mse(s_pooled, t_pooled)
    return loss


def distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                      target: torch.Tensor | None, kd_mask: torch.Tensor, tap_names: list[str],
                      weights: LossWeights = LossWeights(),
                      text: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts (each ``[B]``) from captured student/teacher passes (empty when
    ``weights`` need no UNet) and the text-alignment term ``text``. ``parts["sd_mask"]`` marks
    the samples that get ``L_SD``, ``parts["kd_mask"]`` those that get the KD terms."""
    kd = kd_mask.float()
    zeros = torch.zeros_like(kd)
    if weights.needs_unet:
        sd = per_sample_mse(student["output"], target)
        logit = per_sample_mse(student["output"], teacher["output"])
        feature = sum(per_sample_mse(student[name], teacher[name]) for name in tap_names)
    else:
        sd = logit = feature = zeros
    text = zeros if text is None else text
    sd_mask = torch.ones_like(kd) if weights.sd_on_parallel else 1 - kd
    per_sample = (sd_mask * weights.sd * sd
                  + kd * (weights.logit * logit + weights.feature * feature + weights.text * text))
    return per_sample.mean(), {"loss": per_sample, "sd": sd, "lkd": logit, "fkd": feature, "text": text,
                               "kd_mask": kd, "sd_mask": sd_mask}
