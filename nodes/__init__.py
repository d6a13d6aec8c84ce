"""ComfyUI nodes of the pack; importing this package needs a running ComfyUI."""
from .folders import register_folders
from .pea_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

register_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
