"""Every node of the pack, with its display name."""
from .audio_io import InstructMusicGenLoadAudio, InstructMusicGenSaveAudio
from .comfy_glue import inside_comfyui, register_model_folders
from .editing import InstructMusicGenDecode, InstructMusicGenEdit, InstructMusicGenEncode
from .loader import InstructMusicGenLoader

if inside_comfyui():  # importing outside ComfyUI (tests, tools) defines the nodes only
    register_model_folders()

NODE_CLASS_MAPPINGS = {
    "InstructMusicGenLoader": InstructMusicGenLoader,
    "InstructMusicGenLoadAudio": InstructMusicGenLoadAudio,
    "InstructMusicGenEncode": InstructMusicGenEncode,
    "InstructMusicGenEdit": InstructMusicGenEdit,
    "InstructMusicGenDecode": InstructMusicGenDecode,
    "InstructMusicGenSaveAudio": InstructMusicGenSaveAudio,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "InstructMusicGenLoader": "Load Model (Instruct-MusicGen)",
    "InstructMusicGenLoadAudio": "Load Audio (Instruct-MusicGen)",
    "InstructMusicGenEncode": "Encode Audio (Instruct-MusicGen)",
    "InstructMusicGenEdit": "Instruct Edit (Instruct-MusicGen)",
    "InstructMusicGenDecode": "Decode Audio (Instruct-MusicGen)",
    "InstructMusicGenSaveAudio": "Save Audio WAV (Instruct-MusicGen)",
}
