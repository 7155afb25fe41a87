"""ComfyUI entry point of the Instruct-MusicGen node pack."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# the browser side: web/instruct_musicgen.js (free text greys out operation and stem; titles fit)
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
