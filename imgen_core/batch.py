"""Which output file each input of an edit gets: one file to one file, or many files (or folders
of them) into an output folder under their own names."""
from __future__ import annotations

import os
from pathlib import Path

from .audio import AUDIO_SUFFIXES, WRITABLE_SUFFIXES, AudioError, is_same_file, written_by_us


def is_batch(inputs: list[str], output: str) -> bool:
    """Several inputs, a folder among them, or an output that is (or ends like) a folder."""
    return (len(inputs) > 1 or any(Path(i).is_dir() for i in inputs) or Path(output).is_dir()
            or output.endswith(("/", os.sep)))


def audio_files(inputs: list[str]) -> list[Path]:
    """The files named, and the audio files directly inside the folders named, in the order given
    (a folder's files sorted by name)."""
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not inside:
                raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in the folder {path}")
            files += inside
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"audio file not found: {path}")
    return files


def subfolders_left_out(inputs: list[str]) -> list[Path]:
    """The subfolders of the folders named that hold audio files: not edited (only a folder's
    own files are), which the user is told."""
    found = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found += sorted(d for d in path.iterdir() if d.is_dir() and any(
                p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES for p in d.iterdir()))
    return found


def plan(inputs: list[str], output: str) -> list[tuple[Path, Path]]:
    """(input, output) pairs. One input and a file name: that pair. Otherwise the output is a
    folder (created when missing) and each input keeps its name there (as .wav when its own
    format cannot be written). Two inputs wanting one output name, or an output that is an
    input, are refused before anything runs; a file this program wrote as another input's
    output (a folder edited into itself, run again) is no input."""
    if not is_batch(inputs, output):
        pairs = [(Path(inputs[0]), Path(output))]
    else:
        folder = Path(output)
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"{folder} is a file; with several inputs or a folder, -o names a folder")
        files = audio_files(inputs)
        pairs = [(f, folder / (f.stem + (f.suffix if f.suffix.lower() in WRITABLE_SUFFIXES else ".wav"))) for f in files]
        # an earlier run's output in the input folder (edited into the same folder) is no input
        made = {dst.resolve() for src, dst in pairs if src.resolve() != dst.resolve()}
        pairs = [(src, dst) for src, dst in pairs if not (src.resolve() in made and written_by_us(src))]
        taken: dict[Path, Path] = {}
        for src, dst in pairs:
            if dst in taken:
                raise AudioError(f"{taken[dst]} and {src} would both be written to {dst}; edit them into "
                                 f"different folders")
            taken[dst] = src
        folder.mkdir(parents=True, exist_ok=True)
    for src, dst in pairs:
        if is_same_file(dst, src):
            raise FileExistsError(f"the output {dst} is the input file; choose another name (inputs are never "
                                  f"replaced, not even when overwriting)")
    return pairs
