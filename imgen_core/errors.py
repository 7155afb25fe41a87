"""Errors that name the setting at fault, in the library's own terms (a parameter name), so that
the command line and the ComfyUI nodes can add which of their own controls sets it."""
from __future__ import annotations


def about(error: Exception, setting: str) -> Exception:
    """`error`, marked as caused by the library parameter `setting` ("overwrite", "mode", ...)."""
    error.setting = setting
    return error


def setting_of(error: BaseException) -> str | None:
    """The library parameter an error was marked with by `about`, if any."""
    return getattr(error, "setting", None)
