"""Parts of a song (arrangement.py) rendered to audio with a General MIDI SoundFont, one part at
a time, as Slakh2100 renders Lakh MIDI instrument by instrument. The synthesiser is tinysoundfont
(pip, MIT; installed without its pyaudio dependency, which only plays sound); the font is
FluidR3 GM (Debian's fluid-soundfont-gm, MIT) when installed, else TimGM6mb (GPL-2), which the
pretty_midi package carries."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .arrangement import Part

SAMPLE_RATE = 44100
FONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2")
INSTALL = ("pip install --no-deps tinysoundfont && pip install pretty_midi "
           "(and, for better instruments, apt-get install fluid-soundfont-gm)")


class MissingPart(RuntimeError):
    """What rendering needs is not installed; the message says what to install, in one line."""


def prepare(font: str | os.PathLike | None = None) -> Path:
    """Check, before any work, that rendering can run: tinysoundfont and pretty_midi importable, and
    a SoundFont (the one given, else FluidR3 GM, else pretty_midi's TimGM6mb). Returns the font."""
    for module in ("tinysoundfont", "pretty_midi"):
        try:
            __import__(module)
        except ImportError:
            raise MissingPart(f"rendering music needs {module}, which is not installed: {INSTALL}") from None
    if font is not None:
        if not Path(font).is_file():
            raise FileNotFoundError(f"SoundFont not found: {font} (give a General MIDI .sf2 file)")
        return Path(font)
    for path in FONTS:
        if Path(path).is_file():
            return Path(path)
    import pretty_midi
    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise MissingPart(f"no General MIDI SoundFont found (looked for {FONTS[0]} and pretty_midi's TimGM6mb.sf2): "
                          f"{INSTALL}")
    return path


def render_part(part: Part, seconds: float, font: Path) -> np.ndarray:
    """The part played alone on its program, mono float32 [samples] at SAMPLE_RATE, `seconds`
    long (notes still sounding then are cut). `font`: from `prepare`."""
    synth, font_id = _synth(font)
    synth.program_select(0, font_id, 128 if part.is_drum else 0, part.program, is_drums=part.is_drum)
    events = sorted([(n.start, 1, n.pitch, n.velocity) for n in part.notes]
                    + [(n.end, 0, n.pitch, 0) for n in part.notes])  # at one time: offs before ons
    total = int(round(seconds * SAMPLE_RATE))
    out = np.zeros(total, dtype=np.float32)
    done = 0
    for at, on, pitch, velocity in events:
        until = min(total, int(round(at * SAMPLE_RATE)))
        done = _play(synth, out, done, until)
        if on:
            synth.noteon(0, pitch, velocity)
        else:
            synth.noteoff(0, pitch)
    _play(synth, out, done, total)
    _silence(synth)
    return out


def _silence(synth):
    """Stop every voice and run the synthesiser until it is silent, so that the next part starts
    from the state a new one has (checked bit for bit: a part renders the same after any other)."""
    synth.sounds_off()
    for _ in range(SAMPLE_RATE // 1024 * 10):  # the release of sounds_off takes milliseconds
        if not np.frombuffer(synth.generate_simple(1024), dtype=np.float32).any():
            return
    raise RuntimeError("the synthesiser did not fall silent within 10 s of stopping every sound")


_SYNTHS: dict = {}


def _synth(font: Path):
    """One synthesiser per font for the process: loading FluidR3 takes 0.3 s, a part 0.1 s."""
    key = str(Path(font).resolve())
    if key not in _SYNTHS:
        import tinysoundfont
        synth = tinysoundfont.Synth(samplerate=SAMPLE_RATE)
        _SYNTHS.clear()  # the last font only: a font can be 150 MB in memory
        _SYNTHS[key] = (synth, synth.sfload(key))
    return _SYNTHS[key]


def _play(synth, out: np.ndarray, done: int, until: int) -> int:
    """Fill out[done:until] with the synthesiser's output (its two channels averaged)."""
    while done < until:
        n = min(until - done, 1 << 16)
        stereo = np.frombuffer(synth.generate_simple(n), dtype=np.float32).reshape(n, 2)
        out[done:done + n] = stereo.mean(axis=1)
        done += n
    return done
