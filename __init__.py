"""ComfyUI-PEA-Diffusion: prompt English Stable Diffusion models in any language."""
import importlib.util

if importlib.util.find_spec("folder_paths") is not None:  # inside ComfyUI
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # imported on its own (tests, training): adapters/ works without ComfyUI
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"  # web/docs/<NodeId>.md: the help pages ComfyUI's frontend opens for each node

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
