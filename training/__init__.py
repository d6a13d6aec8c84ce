"""Headless distillation training of PEA adapters on ComfyUI's own model code."""
