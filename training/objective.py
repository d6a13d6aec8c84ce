"""The PEA distillation objective: ``L_SD + lambda_L * L_LKD + lambda_F * L_FKD`` per sample.

Samples marked native (culture-specific captions without a trustworthy English twin) get only
``L_SD``; the batch loss is the mean of the per-sample losses, so it is the same whatever the
split of a global batch over processes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossWeights:
    sd: float = 1.0
    logit: float = 1.0
    feature: float = 0.1


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample: ``[B, ...]`` -> ``[B]`` in fp32."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)


def prediction_target(model_sampling, sigma: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """What the model should output (eps, v, ...) so that its denoised estimate is ``clean``.

    ComfyUI's ``calculate_denoised`` is affine in the model output: ``denoised = a - b * out``;
    both parts are read from the model's own sampling object, so any parametrisation works.
    """
    at_zero = model_sampling.calculate_denoised(sigma, torch.zeros_like(noisy), noisy)
    slope = at_zero - model_sampling.calculate_denoised(sigma, torch.ones_like(noisy), noisy)
    return (at_zero - clean) / slope


def distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                      target: torch.Tensor, kd_mask: torch.Tensor, tap_names: list[str],
                      weights: LossWeights = LossWeights()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts (each ``[B]``) from captured student/teacher passes."""
    sd = per_sample_mse(student["output"], target)
    logit = per_sample_mse(student["output"], teacher["output"])
    feature = sum(per_sample_mse(student[name], teacher[name]) for name in tap_names)
    kd = kd_mask.float()
    per_sample = weights.sd * sd + kd * (weights.logit * logit + weights.feature * feature)
    return per_sample.mean(), {"loss": per_sample, "sd": sd, "lkd": logit, "fkd": feature, "kd_mask": kd}
