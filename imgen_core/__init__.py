"""Instruct-MusicGen: edit music by instruction. The library under the CLI and the ComfyUI nodes."""

__version__ = "0.1.0"
