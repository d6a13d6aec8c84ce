"""ComfyUI nodes of the pack; importing this package needs a running ComfyUI."""
from . import clip_score, pea_nodes
from .folders import register_folders

register_folders()

NODE_CLASS_MAPPINGS = {**pea_nodes.NODE_CLASS_MAPPINGS, **clip_score.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**pea_nodes.NODE_DISPLAY_NAME_MAPPINGS, **clip_score.NODE_DISPLAY_NAME_MAPPINGS}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
