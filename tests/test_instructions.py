import pytest

from imgen_core.instructions import InstructionError, free_text, phrase


@pytest.mark.parametrize("op, stem, text", [
    ("add", "drums", "Music piece. Instruct: Add Drums."),
    ("remove", "Bass", "Music piece. Instruct: No Bass."),
    ("extract", " piano ", "Music piece. Instruct: Only Piano."),
])
def test_slakh_templates(op, stem, text):
    assert phrase(op, stem) == text


def test_moisesdb_templates_are_the_official_texts():
    assert phrase("add", "drums", "moisesdb") == "Music piece. Instruction: Add drums."
    assert phrase("remove", "bass", "moisesdb") == "Music piece. Instruction: No bass"
    assert phrase("extract", "bowed_strings", "moisesdb") == "Music piece. Instruction: Only bowed_strings."


def test_unknown_stem_lists_the_valid_ones():
    with pytest.raises(InstructionError, match="valid stems: drums, bass, piano, guitar"):
        phrase("add", "vocals")


def test_unknown_operation_lists_the_valid_ones():
    with pytest.raises(InstructionError, match="valid operations: add, remove, extract"):
        phrase("replace", "drums")


def test_checkpoint_vocabulary_is_respected():
    assert phrase("add", "strings", stems=["drums", "strings"]) == "Music piece. Instruct: Add Strings."
    with pytest.raises(InstructionError, match="valid stems: drums, strings"):
        phrase("add", "bass", stems=["drums", "strings"])


def test_free_text():
    assert free_text("  make it  jazzier ") == "make it jazzier"
    with pytest.raises(InstructionError, match="empty"):
        free_text("   ")
