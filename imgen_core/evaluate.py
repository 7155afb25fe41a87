"""`imgen eval`: the paper's evaluation on the test songs of a stem dataset.

One 5 s triplet per song and operation, drawn by the training rules (data.py) from a seed, the
song and the operation only; each is edited with a seed of its own, so any split of the clips
over processes (torchrun) gives the same per-clip numbers. Per clip: SSIM of the 16 kHz mel
spectrograms, SI-SDR and SI-SDRi (remove, extract), CLAP score and KL (when their models are
available); per operation and stem: their means and the FAD (VGGish) of the edited clips against
the targets. Where the songs' MIDI is known (Slakh2100 layout) and basic-pitch's note model can
run, also note precision, recall and F1 of the edited clip against the notes of the output's
stems, and the F1 of the target clip itself (`note_f1_target`: what the transcription reaches on
the right answer, the metric's ceiling). Written to the output folder: clips.csv, clips.jsonl, summary.json, summary.md and
the audio of every clip (input, target, edited).
"""
from __future__ import annotations

import csv
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import metrics, ranks
from .audio import resample, write_audio
from .data import SAMPLE_RATE, draw_eval_triplet, eval_triplets, read_songs
from .editor import edit_many
from .errors import about
from .eval_models import CLAP_RATE
from .files import replacing
from .instructions import OPERATIONS
from .sampling import MAX_BATCH, Sampling
from .take import render_mode

SEPARATION = ("remove", "extract")  # the operations with one right answer, where SI-SDR means something
RESULT_FILES = ("clips.csv", "clips.jsonl", "summary.json", "summary.md", "audio")
NOTES = ("note_precision", "note_recall", "note_f1", "note_f1_target")
COLUMNS = ("clip", "operation", "target", "song", "start", "instruction", "input_stems", "output_stems",
           "clap", "kl_softmax", "kl_sigmoid", "ssim", "si_sdr", "si_sdri", *NOTES)
MEANS = ("clap", "kl_softmax", "kl_sigmoid", "ssim", "si_sdr", "si_sdri", *NOTES)


@dataclass(frozen=True)
class EvalSettings:
    """One evaluation run. `sampling` is how every clip is edited; its seed is the run's: it draws
    the triplets and, with each clip's name, that clip's own seed (`clip_seed`). Checked when made."""

    data: str
    layout: str
    out: str
    operations: tuple[str, ...] = OPERATIONS
    classes: tuple[str, ...] | None = None  # default: the adapter's stems
    seconds: float = 5.0  # the paper's clip length
    limit: int | None = None  # songs per operation (the first ones), for a quick look
    every_stem: bool = False  # one clip per song, operation and target class present (the paper: one per song)
    render: str = "model"  # the paper scored the model's own output
    sampling: Sampling = Sampling()
    threads: int = ranks.REPRODUCIBLE_THREADS  # per process: results do not depend on how the run is split
    batch: int = 1  # clips decoded together (those of one instruction); results differ only by rounding

    def __post_init__(self):
        ops = tuple(self.operations)
        if not ops or any(op not in OPERATIONS for op in ops):
            raise about(ValueError(f"the operations must be among {', '.join(OPERATIONS)}, got {ops!r}"),
                        "operations")
        if not 0 < self.seconds <= 30:
            raise about(ValueError(f"the clip length must be more than 0 and at most 30 s, got {self.seconds}"),
                        "seconds")
        if self.limit is not None and self.limit < 1:
            raise about(ValueError(f"the limit of songs per operation must be at least 1, got {self.limit}"), "limit")
        render_mode(self.render, ["add"])
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise about(ValueError(f"threads must be an integer of at least 1, got {self.threads!r}"), "threads")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or not 1 <= self.batch <= MAX_BATCH:
            raise about(ValueError(f"the batch must be 1 to {MAX_BATCH} clips, got {self.batch!r}"), "batch")


def clip_seed(seed: int, clip: str) -> int:
    """The generation seed of one clip: fixed by the run's seed and the clip, not by its place."""
    return zlib.crc32(f"{seed}:{clip}".encode())


def clip_list(settings: EvalSettings, classes, songs=None) -> list[tuple[str, object, str, str | None]]:
    songs = read_songs(settings.layout, settings.data) if songs is None else songs
    clips = eval_triplets(songs, classes, settings.operations, settings.every_stem)
    if settings.limit is not None:  # the clips of the first `limit` songs
        first = set(list(dict.fromkeys(c[1].name for c in clips))[:settings.limit])
        clips = [c for c in clips if c[1].name in first]
    return clips


def edit_clips(editor, settings: EvalSettings, clips: list[str], triplets: list) -> list[tuple[torch.Tensor, int]]:
    """The clips' edited audio (mono, and its rate), the clips with one instruction decoded
    together (editor.edit_many), each drawing from its own seed (`clip_seed`): a clip's tokens do
    not depend on the others, up to the rounding of products over more rows."""
    out: list = [None] * len(clips)
    by_text: dict[str, list[int]] = {}
    for i, t in enumerate(triplets):
        by_text.setdefault(t.text, []).append(i)
    for text, members in by_text.items():
        takes = [editor.encode(triplets[i].input, SAMPLE_RATE) for i in members]
        seeds = [clip_seed(settings.sampling.seed, clips[i]) for i in members]
        for i, take in zip(members, edit_many(editor, takes, text, settings.sampling, batch=len(members), seeds=seeds)):
            edited, rate = editor.render(take, settings.render)
            out[i] = (edited[0].mean(0), rate)  # mono, as every metric takes it
    return out


def score_clip(settings: EvalSettings, clip: str, song, operation: str, t, edited: torch.Tensor, rate: int,
               models: dict, audio_dir: Path | None) -> tuple[dict, dict]:
    """(the clip's row, its VGGish frames {"edited", "target"} when FAD is measured) for triplet
    `t` edited into `edited` (mono at `rate`)."""
    if audio_dir is not None:
        folder = audio_dir / clip
        folder.mkdir(parents=True, exist_ok=True)
        for name, wav, r in (("input", t.input, SAMPLE_RATE), ("target", t.output, SAMPLE_RATE), ("edited", edited, rate)):
            write_audio(folder / f"{name}.wav", wav[None], r, overwrite=True)
    pred, target = metrics.at_eval_rate(edited, rate), metrics.at_eval_rate(t.output, SAMPLE_RATE)
    source = metrics.at_eval_rate(t.input, SAMPLE_RATE)
    row = {"clip": clip, "operation": operation, "target": t.target, "song": t.song, "start": round(t.start, 4),
           "instruction": t.text, "input_stems": " ".join(t.input_classes),
           "output_stems": " ".join(t.output_classes), "ssim": metrics.ssim_mel(pred, target)}
    if operation in SEPARATION:
        row["si_sdr"] = metrics.si_sdr(pred, target)
        row["si_sdri"] = metrics.si_sdr_improvement(pred, source, target)
    if "clap" in models:
        caption = metrics.clap_caption(operation, t.target, t.output_classes)
        audio48 = resample(edited[None], rate, CLAP_RATE)[0].numpy()
        row["clap"] = metrics.cosine(models["clap"].text(caption), models["clap"].audio(audio48))
    if "kl" in models:
        row.update(metrics.kl_divergences(models["kl"].logits(pred[0].numpy()), models["kl"].logits(target[0].numpy())))
    if "notes" in models:
        row.update(note_row(models["notes"], song, t, edited, rate, settings.seconds))
    frames = {}
    if "fad" in models:
        frames = {"edited": models["fad"].frames(pred[0].numpy()), "target": models["fad"].frames(target[0].numpy())}
    return row, frames


def check_midi(songs) -> None:
    """Read every MIDI file the note metrics may use (each a few KB), so that a malformed one is
    refused, naming it, before any clip is edited."""
    from .midi_file import read_notes
    for song in songs:
        for paths in song.midi.values():
            for path in paths:
                read_notes(path)


def note_row(model, song, t, edited, rate: int, seconds: float) -> dict:
    """The note metrics of one clip, when the notes of its output are known and pitched (none
    for a drums-only output, or a song without MIDI)."""
    from .midi_file import notes_between
    if not song.notes_known(t.output_classes):
        return {}
    reference = notes_between([p for c in t.output_classes for p in song.midi.get(c, ())], t.start, seconds)
    if not reference:
        return {}
    row = metrics.note_scores(reference, model.notes(edited.numpy(), rate))
    row["note_f1_target"] = metrics.note_scores(reference, model.notes(t.output.numpy(), SAMPLE_RATE))["note_f1"]
    return row


def summarise(rows: list[dict], frames: dict[str, dict]) -> list[dict]:
    """Per operation and target stem, and per operation over all stems: the number of clips, the
    mean of each per-clip metric, and the FAD of the group's edited clips against its targets."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["operation"], row["target"]), []).append(row)
        groups.setdefault((row["operation"], "all"), []).append(row)
    order = list(dict.fromkeys(row["operation"] for row in rows))
    out = []
    for (op, stem), members in sorted(groups.items(), key=lambda g: (order.index(g[0][0]), g[0][1] == "all",
                                                                     g[0][1])):
        entry = {"operation": op, "target": stem, "clips": len(members)}
        for name in MEANS:
            values = [r[name] for r in members if r.get(name) is not None]
            if values:
                entry[name] = float(np.mean(values))
        mine = [frames[r["clip"]] for r in members if r["clip"] in frames]
        if mine:
            edited = np.concatenate([f["edited"] for f in mine])
            target = np.concatenate([f["target"] for f in mine])
            if min(len(edited), len(target)) >= 2:
                entry["fad"] = metrics.frechet_distance(edited, target)
        out.append(entry)
    return out


def markdown(summary: list[dict], skipped: dict[str, str] | None = None) -> str:
    """The summary as a table, and the metrics not computed with why (`skipped`: name -> reason)."""
    text = _table(summary)
    if skipped:
        text += "\nNot computed: " + "; ".join(f"{name.upper()} ({why})" for name, why in sorted(skipped.items())) + "\n"
    return text


def _table(summary: list[dict]) -> str:
    names = [n for n in ("clips", "fad", "clap", "kl_softmax", "kl_sigmoid", "ssim", "si_sdr", "si_sdri", *NOTES)
             if any(n in e for e in summary)]
    lines = ["| operation | stem | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for e in summary:
        cells = [str(e[n]) if n == "clips" else (f"{e[n]:.4f}" if n in e else "") for n in names]
        lines.append(f"| {e['operation']} | {e['target']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, rows: list[dict], summary: list[dict], skipped: dict[str, str] | None = None):
    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    texts = {"clips.csv": table.getvalue(),
             "clips.jsonl": "".join(json.dumps(r) + "\n" for r in rows),
             "summary.json": json.dumps(summary, indent=1) + "\n",
             "summary.md": markdown(summary, skipped)}
    for name, text in texts.items():
        with replacing(out / name) as f:
            f.write(text.encode())


def evaluate(editor, settings: EvalSettings, models: dict, *, keep_audio: bool = True, songs=None,
             progress: Callable[[int, int], None] | None = None,
             skipped: dict[str, str] | None = None) -> list[dict] | None:
    """Run the evaluation; this process scores its share of the clips, with `settings.threads` CPU
    threads. On rank 0: every clip's row gathered, the results written, and the summary
    returned; elsewhere None. `songs`: the dataset as `data.read_songs` returns it, when already
    read. `skipped`: the metrics not computed and why, for summary.md."""
    classes = [c.lower() for c in (settings.classes or editor.stems)]
    clips = list(enumerate(clip_list(settings, classes, songs)))
    # batches of clips in the list's order; the processes take whole batches
    mine = ranks.share([clips[i:i + settings.batch] for i in range(0, len(clips), settings.batch)])
    out = Path(settings.out)
    rows, frames, done = [], {}, 0
    with ranks.fixed_threads(settings.threads):
        for batch in mine:
            triplets = [draw_eval_triplet(song, op, classes, settings.seconds, settings.sampling.seed, editor.dialect,
                                          target) for _, (clip, song, op, target) in batch]
            edited = edit_clips(editor, settings, [clip for _, (clip, *_) in batch], triplets)
            for (index, (clip, song, op, _)), t, (audio, rate) in zip(batch, triplets, edited):
                row, clip_frames = score_clip(settings, clip, song, op, t, audio, rate, models,
                                              out / "audio" if keep_audio else None)
                rows.append((index, row))
                if clip_frames:
                    frames[clip] = clip_frames
                done += 1
                if progress is not None:
                    progress(done, sum(len(b) for b in mine))
    everything = ranks.gather((rows, frames))
    if ranks.world()[0] != 0:
        return None
    rows = [row for _, row in sorted(r for part, _ in everything for r in part)]
    frames = {k: v for _, part in everything for k, v in part.items()}
    summary = summarise(rows, frames)
    write_results(out, rows, summary, skipped)
    return summary
