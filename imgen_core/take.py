"""An edit in progress (`Take`): a song's current codes and what rendering needs of where they came
from. `Editor.encode` makes one, `Editor.edit` gives the take after one more edit, and
`Editor.render` turns it into audio by the route decided here (`render_mode`,
`Take.in_input_form`)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .audio import AudioError, SourceInfo
from .errors import about
from .instructions import OPERATIONS
from .render import RENDER_MODES

DEFAULT_FADE_SECONDS = 0.05
MAX_FADE_SECONDS = 10.0
# A time range is regenerated from this long before it (the model settles into the edit, as a
# window does over its overlap) to a little after it (so decoding has no edge inside the fade).
RANGE_CONTEXT_SECONDS = 2.0
RANGE_TAIL_SECONDS = 0.5


@dataclass(frozen=True)
class Take:
    codes: torch.Tensor           # [B, K, frames] on the CPU: the song as edited so far
    source: SourceInfo            # the input's rate, channels and length
    original: torch.Tensor        # the input as given: float32 [B, C, T] at source.sample_rate
    original_codes: torch.Tensor  # the input's codes: what preserve rendering compares the edit with
    frame_rate: float             # code frames per second
    operations: tuple = ()        # each edit's operation: add, remove, extract, or None (free text)
    ranges: tuple | None = ()     # each edit's (start, end, fade) seconds; None once one edited it all

    @property
    def seconds(self) -> float:
        return self.codes.shape[-1] / self.frame_rate

    def span(self, start: float | None, end: float | None, fade: float) -> tuple[int, int]:
        """The frames [first, last) regenerated to edit [start, end] seconds (None: the song's
        start or end): the range, its fades, some context before it and a short tail after it."""
        frames = self.codes.shape[-1]
        if start is None and end is None:
            return 0, frames
        start, end = check_range(start, end, fade, self.seconds)
        first = math.floor((start - fade - RANGE_CONTEXT_SECONDS) * self.frame_rate)
        last = math.ceil((end + fade + RANGE_TAIL_SECONDS) * self.frame_rate)
        return max(0, first), min(frames, last)

    def after(self, codes: torch.Tensor, operation: str | None, start: float | None = None,
              end: float | None = None, fade: float = DEFAULT_FADE_SECONDS) -> "Take":
        """This take after one more edit, which gave `codes`, by `operation`, over [start, end]
        seconds (both None: the whole song)."""
        if codes.shape != self.codes.shape:
            raise ValueError(f"an edit must keep the codes' shape {list(self.codes.shape)}, got {list(codes.shape)}")
        ranges = None
        if self.ranges is not None and (start is not None or end is not None):
            ranges = (*self.ranges, (*check_range(start, end, fade, self.seconds), fade))
        return dataclasses.replace(self, codes=codes, operations=(*self.operations, operation), ranges=ranges)

    def render_mode(self, mode: str = "auto") -> str:
        """"preserve" or "model": see `render_mode`."""
        return render_mode(mode, self.operations)

    def in_input_form(self, mode: str = "auto") -> bool:
        """Whether rendering gives the input's rate and channels (preserve rendering, or edits of
        time ranges mixed into the original); otherwise it is the model's output, whose rate and
        channels are a choice."""
        return self.render_mode(mode) == "preserve" or bool(self.ranges)


def render_mode(mode: str, operations) -> str:
    """"preserve" or "model" for a render mode after `operations`: "auto" is preserve when every
    operation applied is add, remove or extract, else model."""
    if mode not in RENDER_MODES:
        raise about(ValueError(f"unknown render mode {mode!r}; valid: {', '.join(RENDER_MODES)}"), "mode")
    known = bool(operations) and all(op in OPERATIONS for op in operations)
    if mode == "preserve" and not known:
        raise about(ValueError("preserve rendering needs to know every operation applied (add, remove or "
                               "extract); an edit by free-text instruction, or no edit, can only be rendered "
                               "as the model's output (mode 'model')"), "mode")
    if mode != "auto":
        return mode
    return "preserve" if known else "model"


def check_range(start: float | None, end: float | None, fade: float, seconds: float) -> tuple[float, float]:
    """(start, end) within a song of `seconds`, start defaulting to 0 and end to the song's end."""
    start = 0.0 if start is None else float(start)
    end = seconds if end is None else float(end)
    if not (math.isfinite(start) and math.isfinite(end) and math.isfinite(fade)) or not 0 <= fade <= MAX_FADE_SECONDS:
        raise ValueError(f"start, end and fade must be finite seconds (fade from 0 to {MAX_FADE_SECONDS}), got "
                         f"{start:g}, {end:g}, {fade:g}")
    if not 0 <= start < end <= seconds + 1e-6:
        raise ValueError(f"the time range must satisfy 0 <= start < end <= {seconds:.2f} s (the song's length), "
                         f"got start {start:g} s, end {end:g} s")
    return start, min(end, seconds)


def check_output_form(in_input_form: bool, rate, channels, input_rate: int | None = None):
    """Refuse a rate or channel choice where rendering gives the input's form."""
    if in_input_form and (rate not in (None, "input", input_rate) or channels not in (None, "input")):
        raise about(AudioError("preserve rendering and edits of a time range give the input's rate and channels; "
                               "a rate or channel choice applies only to the model's output over the whole song"),
                    "rate")
