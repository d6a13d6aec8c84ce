"""Evaluation of PEA adapters: prompt sets, a headless evaluator against the English and
translation baselines, CLIPScore in the prompt's language and FID.

Arrows point from here into ``adapters/``; ComfyUI is imported only by the generating part
(:mod:`evaluation.generate`), as the trainer does.
"""
