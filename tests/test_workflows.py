"""The shipped workflows as files: laid out to be read, explained, with a template thumbnail."""
import json

import pytest

from comfyui_harness import REPO, layout_problems

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


def test_there_are_workflows():
    assert len(WORKFLOWS) >= 6


@pytest.mark.parametrize("path", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_workflow_reads_left_to_right_without_overlaps(path):
    workflow = json.loads(path.read_text())
    assert layout_problems(workflow["nodes"], workflow["links"]) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_workflow_says_what_it_does_and_where_the_models_go(path):
    workflow = json.loads(path.read_text())
    notes = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert len(notes) == 1
    for place in ("models/musicgen", "models/instruct_musicgen", "finetuned.ckpt", "14.6 GB", "download"):
        assert place in notes[0], place


@pytest.mark.parametrize("path", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_workflow_says_where_its_model_comes_from(path):
    """The frontend's missing-models dialog offers a download for a model a workflow lists with a
    huggingface.co address whose file name is a model file, found through the loader's combo."""
    workflow = json.loads(path.read_text())
    released = {"name": "finetuned.ckpt", "directory": "instruct_musicgen",
                "url": "https://huggingface.co/ldzhangyx/instruct-MusicGen/resolve/main/finetuned.ckpt"}
    assert workflow["models"] == [released]
    loaders = [n for n in workflow["nodes"] if n["type"] == "InstructMusicGenLoader"]
    assert loaders
    for node in loaders:
        assert node["properties"]["models"] == [released]
        assert node["widgets_values"][:4] == ["from the checkpoint", "finetuned.ckpt", "t5-base", "encodec_32khz"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_the_note_names_the_stems_the_workflow_edits(path):
    workflow = json.loads(path.read_text())
    [note] = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    summary = note.split("\n\n")[0].lower()
    for node in workflow["nodes"]:
        if node["type"] == "InstructMusicGenEdit":
            assert node["widgets_values"][1] in summary, (node["widgets_values"][:2], summary)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_workflow_has_a_readable_title_and_a_thumbnail(path):
    """The template browser shows the file name as the title and <name>.jpg as the picture."""
    assert "_" not in path.stem and path.stem[0].isupper(), path.stem
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"no thumbnail {thumbnail.name}"
    data = thumbnail.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and 2_000 < len(data) < 200_000
