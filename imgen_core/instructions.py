"""Edit instructions: (operation, stem) rendered in the template a checkpoint was trained with."""
from __future__ import annotations

import re

OPERATIONS = ("add", "remove", "extract")

# Slakh2100 checkpoints: "Music piece. Instruct: Add Drums." / "No Drums." / "Only Drums."
SLAKH_STEMS = ("drums", "bass", "piano", "guitar")
SLAKH_ALL_STEMS = ("drums", "bass", "piano", "guitar", "strings", "brass", "reed", "pipe", "synth lead",
                   "synth pad", "organ", "chromatic percussion", "ethnic", "sound effects", "percussive")
MOISESDB_STEMS = ("drums", "bass", "guitar", "piano", "bowed_strings", "wind", "percussion")

# The exact texts of the official training code (the MoisesDB "No ..." has no final period).
DIALECTS = {
    "slakh": {"templates": {"add": "Music piece. Instruct: Add {}.", "remove": "Music piece. Instruct: No {}.",
                            "extract": "Music piece. Instruct: Only {}."},
              "stems": SLAKH_STEMS, "case": "title"},
    "moisesdb": {"templates": {"add": "Music piece. Instruction: Add {}.",
                               "remove": "Music piece. Instruction: No {}",
                               "extract": "Music piece. Instruction: Only {}."},
                 "stems": MOISESDB_STEMS, "case": "lower"},
}


class InstructionError(ValueError):
    """An operation, stem or dialect that the checkpoint does not know."""


def default_stems(dialect: str) -> tuple[str, ...]:
    return _dialect(dialect)["stems"]


def _dialect(dialect: str) -> dict:
    if dialect not in DIALECTS:
        raise InstructionError(f"unknown instruction dialect {dialect!r}; valid: {', '.join(DIALECTS)}")
    return DIALECTS[dialect]


def phrase(operation: str, stem: str, dialect: str = "slakh", stems=None) -> str:
    """The instruction text for `operation` on `stem`, e.g. ('remove', 'bass') -> 'Music piece.
    Instruct: No Bass.'. `stems` is the checkpoint's vocabulary (defaults to the dialect's)."""
    d = _dialect(dialect)
    op = str(operation).strip().lower()
    if op not in OPERATIONS:
        raise InstructionError(f"unknown operation {operation!r}; valid operations: {', '.join(OPERATIONS)}")
    vocab = tuple(s.lower() for s in (stems or d["stems"]))
    name = " ".join(str(stem).strip().lower().split())
    if name not in vocab:
        raise InstructionError(f"unknown stem {stem!r} for this checkpoint; valid stems: {', '.join(vocab)}")
    shown = name.title() if d["case"] == "title" else name
    return d["templates"][op].format(shown)


def free_text(text: str) -> str:
    """A user-written instruction, used as is (an advanced option: the model saw only templates)."""
    text = " ".join(str(text).split())
    if not text:
        raise InstructionError("the instruction text is empty")
    return text


def operation_of(text: str) -> str | None:
    """The operation a templated instruction asks for (add, remove, extract), None for free text."""
    text = " ".join(str(text).split())
    for d in DIALECTS.values():
        for op, template in d["templates"].items():
            if re.fullmatch(re.escape(template).replace(re.escape("{}"), ".+"), text):
                return op
    return None
