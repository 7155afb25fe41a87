"""`imgen`: edit a music file by instruction, convert the official checkpoint, run a self-check."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path

from . import instructions

EPILOG = """Weights: the Instruct-MusicGen checkpoint (ldzhangyx/instruct-MusicGen, 14.6 GB, no licence
stated; it holds MusicGen-large, CC-BY-NC 4.0, non-commercial), MusicGen-large's config.json, T5
(t5-base) and EnCodec (facebook/encodec_32khz) are downloaded on first use into IMGEN_WEIGHTS
(`imgen models` lists them), or read from local paths. Set HF_HUB_OFFLINE=1 (or --offline) to never
touch the network; `imgen download --to DIR` fetches everything for an offline machine."""

# What to do about an error, in this command line's words, by the library setting it names.
HINTS = {"overwrite": "pass --overwrite to replace it",
         "mode": "use --render model",
         "rate": "--rate and --channels apply to --render model over the whole song",
         "clap_checkpoint": "pass --clap-checkpoint FILE",
         "metric_weights": "--metric-weights DIR names another folder",
         "operations": "--ops takes a comma-separated list of add, remove, extract",
         "seconds": "see --seconds", "limit": "see --limit", "threads": "see --threads"}


def _progress_bar(desc: str, position: int = 0, unit: str = "step"):
    from tqdm import tqdm
    bar = None
    if not sys.stderr.isatty():
        position = 0  # nested bars move the cursor up ("\x1b[A"), which a log file shows as stray characters

    def update(done: int, total: int):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, position=position, leave=position == 0)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update


def _stage_bars(label: str = "model"):
    """Bars for what may take a while before any work: downloads, their check, the one-time
    conversion of the official checkpoint. One per stage, named "<stage> <label>"; a finished one
    makes way for the next file's ("loading" is the caller's to show)."""
    bars = {}

    def update(stage: str, done: int, total: int):
        if stage == "loading":
            return
        if stage not in bars:
            bars[stage] = _progress_bar(f"{stage} {label}", unit="B")
        bars[stage](done, total)
        if done >= total:
            del bars[stage]
    return update


def _add_model_args(p: argparse.ArgumentParser):
    from . import defaults
    p.add_argument("--base", default=defaults.BASE,
                   help="base MusicGen: state_dict.bin, config.json, their folder or a HF repo (default "
                   f"{defaults.BASE}). With the official checkpoint, which holds the whole model, only the base's "
                   "config is read (a few kB); its weights only for an adapter without the LM")
    p.add_argument("--adapter", default=defaults.ADAPTER,
                   help=f"adapter .safetensors, official .ckpt or HF repo (default {defaults.ADAPTER})")
    p.add_argument("--t5", default=defaults.T5, help=f"T5 folder or HF repo (default {defaults.T5})")
    p.add_argument("--encodec", default=defaults.ENCODEC, help=f"EnCodec folder or HF repo (default {defaults.ENCODEC})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto; under torchrun "
                   "each process takes the GPU of its local rank)")
    p.add_argument("--dtype", default="auto", choices=defaults.DTYPE_CHOICES,
                   help="model precision (default: fp16 on GPU, fp32 on CPU); int8: the LM's weights in int8, half "
                   "the memory of fp16, activations in fp16 on GPU; on CPU fbgemm's int8 products, the fastest choice there")
    p.add_argument("--offline", action="store_true", help="never use the network")


def _add_generation_args(p: argparse.ArgumentParser, threads: str):
    from .sampling import Sampling
    d = Sampling()
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--guidance", type=float, default=d.guidance,
                   help=f"classifier-free guidance coefficient (default {d.guidance})")
    p.add_argument("--top-k", type=int, default=d.top_k, help=f"sample among the k most likely tokens (default {d.top_k})")
    p.add_argument("--top-p", type=float, default=d.top_p, help=f"nucleus sampling threshold; 0 disables (default {d.top_p})")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help=f"sampling temperature; 0 is greedy (default {d.temperature})")
    p.add_argument("--window", type=float, default=d.window_seconds, help=f"seconds per edit window, at most 10 "
                   f"(default {d.window_seconds:g}, the length the released model was trained on)")
    p.add_argument("--overlap", type=float, default=d.overlap_seconds, help="seconds each window re-reads from the "
                   f"previous one, so the song continues across windows (default {d.overlap_seconds:g})")
    p.add_argument("--threads", type=int, help=f"CPU threads per process; {threads}")


def _sampling(args):
    """The generation settings the options ask for, checked before any model loads."""
    from .sampling import Sampling
    return Sampling(guidance=args.guidance, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                    window_seconds=args.window, overlap_seconds=args.overlap, seed=args.seed)


def _output_rate(rate: str | None):
    from .audio import MAX_RATE, MIN_RATE
    if rate in (None, "model", "input"):
        return rate
    if not rate.isdigit() or not MIN_RATE <= int(rate) <= MAX_RATE:
        raise ValueError(f"--rate takes model, input or a number of Hz from {MIN_RATE} to {MAX_RATE}, got {rate!r}")
    return int(rate)


def _check_model_settings(args, sampling):
    """The instruction and the window against the adapter's own header, before anything loads
    (when the adapter is on this machine; a download is checked once it is here)."""
    from . import defaults, instructions
    from .loader import adapter_summary
    summary = adapter_summary(args.adapter)
    if summary is None:
        return
    sampling.window_frames(defaults.FRAME_RATE, summary.max_frames)
    if getattr(args, "op", None) is not None:
        instructions.phrase(args.op, args.stem, summary.dialect, summary.stems)


def cmd_edit(args) -> int:
    from . import ranks
    from .audio import AudioError, check_audio, check_output, read_recording, write_audio
    from .batch import is_batch, plan, subfolders_left_out
    from .defaults import pick_device
    from .editor import Editor, edit_many
    from .instructions import operation_of
    from .take import check_output_form, check_range, render_mode
    if (args.op is None) == (args.instruction is None) or (args.op is not None and args.stem is None):
        raise ValueError("give either --op and --stem, or --instruction")
    sampling = _sampling(args)
    rate = _output_rate(args.rate)
    ranged = args.start is not None or args.end is not None
    mode = render_mode(args.render, [args.op or operation_of(args.instruction)])
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    many = args.many = is_batch(args.input, args.output)
    size = _batch_option(args.batch)
    jobs = plan(args.input, args.output)
    device = pick_device(args.device)
    _check_model_settings(args, sampling)

    def check(rec):
        if ranged:
            check_range(args.start, args.end, args.fade, rec.wav.shape[-1] / rec.sample_rate)
        check_output_form(mode == "preserve" or ranged, rate, args.channels, rec.sample_rate)

    if not many:
        if ranks.world()[1] > 1:
            raise ValueError("under torchrun, give several inputs or a folder and an output folder to share out")
        check_output(jobs[0][1], args.overwrite)
        rec = read_recording(jobs[0][0])
        check(rec)
        check_audio(rec.wav, rec.sample_rate, f"input {jobs[0][0].name}")
    else:
        largest = _check_batch(jobs, args.overwrite, lambda rate_in: check_output_form(
            mode == "preserve" or ranged, rate, args.channels, rate_in))
        for folder in subfolders_left_out(args.input):
            print(f"note: {folder} is a subfolder: only the files directly in the folders named are edited",
                  file=sys.stderr)
        if not args.overwrite and all(dst.exists() for _, dst in jobs):
            print(f"all {len(jobs)} outputs are already there (finished earlier): nothing to do (--overwrite "
                  f"redoes them)", file=sys.stderr)
            return 0
    device = ranks.join(device)
    editor = Editor.from_pretrained(args.base, args.adapter, args.t5, args.encodec, device=device, dtype=args.dtype,
                                    offline=True if args.offline else None, progress=_stage_bars())
    text = editor.instruction(args.op, args.stem, args.instruction)
    print(f"instruction: {text!r}; render: {mode}", file=sys.stderr)

    def edit_one(src, dst, rec, progress):
        check(rec)
        start = time.perf_counter()
        result, out_rate = editor.edit_audio(rec.wav, rec.sample_rate, text, sampling, render=args.render,
                                             start=args.start, end=args.end, fade=args.fade, rate=rate,
                                             channels=args.channels, progress=progress)
        gain = write_audio(dst, result[0], out_rate, overwrite=args.overwrite, like=rec)
        return (f"wrote {dst} ({result.shape[-1] / out_rate:.2f} s, {out_rate} Hz, {result.shape[1]} channel(s)) "
                f"in {time.perf_counter() - start:.1f} s{_quieter(gain)}")

    if not many:
        with ranks.fixed_threads(args.threads) if args.threads else contextlib.nullcontext():
            print(edit_one(*jobs[0], rec, _progress_bar("editing")), file=sys.stderr)
        return 0

    def edit_alone(group, report):
        [(src, dst)] = group
        try:
            report(src, edit_one(src, dst, read_recording(src), _progress_bar(src.name, position=1)))
        except (FileNotFoundError, FileExistsError, AudioError, ValueError) as e:
            report(src, e)

    def edit_together(group, report):
        """Files decoded as one batch (editor.edit_many); each is read, checked, rendered and
        written on its own, so that one bad file does not stop the others."""
        takes, kept = [], []
        for src, dst in group:
            try:
                rec = read_recording(src)
                check(rec)
                take = editor.encode(rec.wav, rec.sample_rate)
                check_output_form(take.after(take.codes, operation_of(text)).in_input_form(args.render), rate,
                                  args.channels, rec.sample_rate)
                takes.append(take)
                kept.append((src, dst, rec))
            except (FileNotFoundError, FileExistsError, AudioError, ValueError) as e:
                report(src, e)
        if not takes:
            return
        start = time.perf_counter()
        try:
            edited = edit_many(editor, takes, text, sampling, batch=len(takes),
                               progress=_progress_bar(f"{len(takes)} songs" if len(takes) > 1 else kept[0][0].name,
                                                      position=1))
        except ValueError as e:  # the decode itself failed (non-finite scores): every song of the batch
            for src, _, _ in kept:
                report(src, e)
            return
        for (src, dst, rec), take in zip(kept, edited):
            try:
                result, out_rate = editor.render(take, args.render, rate=rate, channels=args.channels)
                gain = write_audio(dst, result[0], out_rate, overwrite=args.overwrite, like=rec)
                report(src, f"wrote {dst} ({result.shape[-1] / out_rate:.2f} s, {out_rate} Hz, {result.shape[1]} "
                            f"channel(s)); {len(takes)} song(s) in {time.perf_counter() - start:.1f} s{_quieter(gain)}")
            except (FileNotFoundError, FileExistsError, AudioError, ValueError) as e:
                report(src, e)

    if ranged:  # a time range is edited song by song (Editor.edit)
        size = 1
    elif size == "auto":
        size = _auto_batch_size(editor, sampling, largest)
    print(f"songs decoded together: {size}", file=sys.stderr)
    # many files: a file's result must not depend on how many processes share the run
    with ranks.fixed_threads(args.threads or ranks.REPRODUCIBLE_THREADS):
        return _edit_many(jobs, size, edit_alone if ranged else edit_together, args.overwrite)


AUTO_BATCH = 8  # songs decoded together at most when chosen from the device's memory


def _quieter(note: str | None) -> str:
    """What `write_audio` did to a result that went past full scale, for the line saying it was written."""
    return "" if note is None else f"; {note}"


def _batch_option(value: str):
    """--batch: "auto" or a number of songs from 1 to MAX_BATCH."""
    from .sampling import MAX_BATCH
    if value == "auto":
        return value
    if not value.isdigit() or not 1 <= int(value) <= MAX_BATCH:
        raise ValueError(f"--batch takes auto or a number of songs from 1 to {MAX_BATCH}, got {value!r}")
    return int(value)


def _auto_batch_size(editor, sampling, audio_bytes: int) -> int:
    """Songs to decode together: what a quarter of the device's memory holds (its total, not what
    happens to be free, so that a machine always picks the same; on the CPU shared by the
    processes of a run), at most AUTO_BATCH: per song the decode's working memory and
    `audio_bytes` for its audio."""
    import os

    from . import ranks, working_memory
    device = editor.model.device
    if device.type == "cuda":
        total = _cuda_total_memory(device)
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // ranks.world()[1]
    per_song = working_memory.of_editor(editor, 1, sampling) + audio_bytes
    return max(1, min(AUTO_BATCH, total // 4 // max(per_song, 1)))


def _cuda_total_memory(device) -> int:
    import torch
    return torch.cuda.get_device_properties(device).total_memory


def _check_batch(jobs, overwrite: bool, check_form) -> int:
    """What can be known of many files before anything loads: the outputs' folders writable, and
    each input's header read (its rate checked against the output form). A file's samples are
    read, and a silent one refused, only when its turn comes: the others still go on then.
    Returns about what the largest of the files to edit takes while edited: 3.6 times its
    samples as float32 (README, "What it needs"), rounded up to 4."""
    import os

    import soundfile as sf

    from .audio import AudioError
    from .errors import about, setting_of
    for folder in {dst.parent for _, dst in jobs}:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"output folder is not writable: {folder}")
    largest = 0
    for src, dst in jobs:
        if dst.exists() and not overwrite:
            continue  # done earlier: skipped
        try:
            info = sf.info(str(src))
            check_form(info.samplerate)
        except (RuntimeError, TypeError):
            continue  # unreadable: reported in its turn, the others go on
        except AudioError as e:
            raise about(AudioError(f"{src.name}: {e}"), setting_of(e)) from None
        largest = max(largest, info.frames * info.channels * 4 * 4)
    return largest


def _edit_many(jobs, size: int, edit_group, overwrite: bool) -> int:
    """Edit this process's share of the files, `size` at a time: the files are cut into batches
    in their order and the processes take whole batches, so that the same batches are decoded
    however many processes share the run. Outputs already written are skipped (a rerun after an
    interruption continues where it stopped: outputs appear only when complete). A file that
    cannot be edited is reported and the others go on; the exit code says whether any failed."""
    from tqdm import tqdm

    from . import ranks
    groups = ranks.share([jobs[i:i + size] for i in range(0, len(jobs), size)])
    todo = [[(src, dst) for src, dst in group if overwrite or not dst.exists()] for group in groups]
    mine, left = sum(len(g) for g in groups), sum(len(g) for g in todo)
    if left < mine:
        print(f"{mine - left} of {mine} outputs are already there (finished earlier): skipped", file=sys.stderr)
    failed = []
    rank, world = ranks.world()
    if not mine:  # more processes than batches: an empty bar would only look stuck
        batches = -(-len(jobs) // size)
        print(f"process {rank}: no files of its own ({len(jobs)} files in {batches} batch(es) of up to {size}, "
              f"shared among {world} processes)", file=sys.stderr)
    files = tqdm(total=left, desc=f"files (process {rank})" if world > 1 else "files", unit="file", position=0,
                 disable=not mine)

    def report(src, outcome):
        if isinstance(outcome, Exception):
            failed.append(src)
            files.write(f"{src}: error: {outcome}", file=sys.stderr)
        else:
            files.write(outcome, file=sys.stderr)
        files.update(1)
    for group in todo:
        if group:
            edit_group(group, report)
    files.close()
    ranks.leave()
    if failed:
        print(f"imgen edit: {len(failed)} of {left} files failed: {', '.join(str(f) for f in failed)}",
              file=sys.stderr)
        return 1
    return 0


def cmd_convert(args) -> int:
    from . import defaults
    from .base_config import base_lm_config
    from .loader import base_config_spec
    from .official_checkpoint import convert_official
    base = args.base or defaults.BASE
    offline = True if args.offline else None
    meta = convert_official(args.checkpoint, args.output, base_model=base, dialect=args.dialect,
                            stems=args.stems.split(",") if args.stems else None, overwrite=args.overwrite,
                            progress=_progress_bar("converting", unit="B"),
                            base_config=None if args.adapter_only else
                            lambda: base_lm_config(base_config_spec(base, offline), offline))
    kind = "the whole model (runs without a base)" if "lm_config" in meta else f"an adapter for {base}"
    print(f"wrote {args.output}: {kind}, {meta['lm_layers']} layers, dialect {meta['dialect']}, "
          f"stems {meta['stems']}", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from . import parts
    weights = Path(args.dir).expanduser() if args.dir else parts.weights_dir()
    print(f"weights folder: {weights}" + ("" if args.dir else " (IMGEN_WEIGHTS)"))
    for part in parts.PARTS:
        found = parts.locate(part, weights)
        state = f"here: {found}" if found is not None else f"missing (goes to {part.target(weights)})"
        print(f"{part.key:12} {parts.human_size(part.size):>9}  {part.what}\n"
              f"{'':12} from {part.source()}; licence: {part.licence}\n"
              f"{'':12} needed: {part.when}\n{'':12} {state}")
    return 0


def cmd_download(args) -> int:
    from . import parts
    weights = Path(args.to).expanduser() if args.to else parts.weights_dir()
    unknown = [k for k in args.parts if k not in parts.BY_KEY]
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}; choose among {', '.join(parts.BY_KEY)}")
    chosen = [parts.BY_KEY[k] for k in args.parts] if args.parts else list(parts.NEEDED)
    for part in chosen:
        if part.present(weights):
            print(f"{part.key}: already here ({part.target(weights)})", file=sys.stderr)
            continue
        bars = [_stage_bars(part.key)]

        def on_file(name, bars=bars):
            bars[0] = _stage_bars(name)
        target = parts.fetch_part(part, weights, lambda *progress: bars[0](*progress), on_file)
        print(f"{part.key}: {target}", file=sys.stderr)
    if args.to:
        print(f"done. On the machine that uses them: IMGEN_WEIGHTS={weights} imgen edit ...", file=sys.stderr)
    return 0


def _demo_songs():
    """(song(seconds, seed) -> stereo 44.1 kHz clip, what it is): music rendered from MIDI when
    tinysoundfont and a SoundFont are installed, else synthetic tones."""
    from . import music, synthetic
    from .synthesis import MissingPart, prepare
    try:
        font = prepare()
    except MissingPart as e:
        print(f"imgen demo: synthetic tones stand in for music ({e})", file=sys.stderr)
        return synthetic.song, "synthesized"
    return (lambda seconds, seed: music.song(seconds, seed, font=font)), f"rendered ({font.name})"


def cmd_make_tiny(args) -> int:
    import dataclasses as dc

    from .files import check_writable_folder
    from .tiny import TINY_LM, save_tiny, sizes_like
    out = check_writable_folder(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; name a new or empty folder")
    cfg = TINY_LM
    if args.like:
        text_dim, card = sizes_like(args.like)
        cfg = dc.replace(cfg, text_dim=text_dim, card=card)
    files = save_tiny(out, lm_cfg=cfg)
    print(f"wrote a tiny random model in {out} (T5 width {cfg.text_dim}, {cfg.card} codes per codebook)",
          file=sys.stderr)
    adapter = args.like or files["adapter"]
    base = "" if args.like else f" --base {files['base']}"
    print(f"try: imgen edit SONG.wav --op add --stem drums -o out.wav --adapter {adapter}{base} --t5 {files['t5']} "
          f"--encodec {files['encodec']} --offline", file=sys.stderr)
    return 0


DEMO_OUTPUT = "imgen_demo.wav"


def cmd_demo(args) -> int:
    from .audio import write_audio
    from .sampling import Sampling
    from .tiny import tiny_editor
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        if args.output != DEMO_OUTPUT:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
        out = next(p for n in range(2, 10_000) if not (p := out.with_name(f"{out.stem}_{n}{out.suffix}")).exists())
        print(f"imgen demo: {args.output} is there already (an earlier run's); writing {out}", file=sys.stderr)
    print("imgen demo: an offline self-check with a TINY RANDOM model. It runs the whole pipeline\n"
          "(resample, EnCodec, T5, fused LM with guidance, decode) but random weights make noise,\n"
          "not music. For real edits see `imgen edit --help` and the README.", file=sys.stderr)
    song, kind = _demo_songs()
    editor = tiny_editor(seed=args.seed)
    sampling = Sampling(seed=args.seed)
    clip = song(args.seconds, seed=0)
    text = editor.instruction("remove", "drums")

    def edited(audio, instruction, progress=None):
        return editor.edit(editor.encode(audio, 44100), instruction, sampling, progress=progress)

    take = edited(clip, text, _progress_bar("editing"))
    result, rate = editor.render(take, "model", channels="mono")
    write_audio(out, result[0], rate, overwrite=args.overwrite)
    print(f"ok: edited a {args.seconds:.1f} s {kind} stereo 44.1 kHz clip with {text!r}; wrote {out} "
          f"({result.shape[-1] / rate:.2f} s, {rate} Hz mono)", file=sys.stderr)
    tokens = take.codes
    # The pipeline passes information through, or something in it is broken.
    by_input = (tokens != edited(song(args.seconds, seed=1), text).codes).float().mean().item()
    by_text = (tokens != edited(clip, editor.instruction("add", "bass")).codes).float().mean().item()
    spread = result.std().item()
    checks = [(f"the output depends on the input: {by_input:.0%} of the tokens change for another clip", by_input > 0.1),
              (f"the output depends on the instruction: {by_text:.0%} change for 'add bass'", by_text > 0.1),
              (f"the decoded audio is not constant: standard deviation {spread:.3f}", spread > 0.01)]
    for line, ok in checks:
        print(f"{'checked' if ok else 'FAILED'}: {line}", file=sys.stderr)
    return 0 if all(ok for _, ok in checks) else 1


def cmd_make_dataset(args) -> int:
    from .dataset_writer import make_dataset
    from .synthesis import MissingPart, prepare
    try:
        font = prepare(args.font)
        print(f"rendering {args.songs} songs of {args.seconds:g} s with {font.name} into {args.out} "
              f"({args.layout} layout)", file=sys.stderr)
        folders = make_dataset(args.out, args.songs, args.seconds, args.seed, args.layout, font,
                               progress=_progress_bar("songs", unit="song"))
    except MissingPart as e:
        raise ValueError(str(e)) from None
    print(f"wrote {len(folders)} songs into {args.out}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from .train import TrainConfig, Trainer, check_run_folder, drop_log_after
    cfg = TrainConfig.from_file(args.config)
    done = 0 if args.encode_only else check_run_folder(cfg.out_dir, args.resume, args.overwrite)
    trainer = Trainer(cfg)
    if args.resume:
        print(f"resumed at step {trainer.resume(args.resume)}", file=sys.stderr)
    if args.encode_only:
        n = trainer.precompute(_progress_bar("encoding"))
        print(f"encoded {n} samples into {cfg.cache_dir}", file=sys.stderr)
    else:
        if done > trainer.step and trainer.rank == 0:  # asked for (--overwrite): the later steps are replaced
            drop_log_after(cfg.out_dir, trainer.step)
            print(f"the log's steps after {trainer.step} (up to {done}) are dropped; they are trained again",
                  file=sys.stderr)
        trainer.fit(progress=_progress_bar("training", unit="step") if trainer.rank == 0 else None)
        if trainer.rank == 0:
            print(f"wrote {cfg.out_dir}/adapter.safetensors", file=sys.stderr)
    trainer.close()  # on success only: after a failure on one rank, a barrier would wait for ever
    return 0


def cmd_eval(args) -> int:
    from . import eval_models, ranks
    from .data import read_songs
    from .defaults import pick_device
    from .editor import Editor
    from .evaluate import RESULT_FILES, EvalSettings, check_midi, evaluate, markdown
    from .files import check_writable_folder
    from .hub import offline_default  # --offline is in it: main() set HF_HUB_OFFLINE
    from .metrics import require_torchmetrics
    if args.metric_weights and Path(args.metric_weights).exists() and not Path(args.metric_weights).is_dir():
        raise ValueError(f"--metric-weights takes a folder (torch hub's layout); {args.metric_weights} is a file")
    skip = [m.strip() for m in (args.skip or "").split(",") if m.strip()]
    if any(m not in eval_models.METRIC_MODELS for m in skip):
        raise ValueError(f"--skip takes a comma-separated list of {', '.join(eval_models.METRIC_MODELS)}; "
                         f"got {args.skip!r}")
    settings = EvalSettings(args.data, args.layout, args.out, tuple(o.strip() for o in args.ops.split(",") if o.strip()),
                            tuple(c.strip() for c in args.classes.split(",")) if args.classes else None,
                            args.seconds, args.limit, args.every_stem, args.render, _sampling(args),
                            **({} if args.threads is None else {"threads": args.threads}))
    batch = _batch_option(args.batch)
    songs = read_songs(args.layout, args.data)  # a wrong folder is said before any model loads
    require_torchmetrics()  # every clip's SSIM needs it: said now, not after the first edit
    out = Path(args.out)
    _check_model_settings(args, settings.sampling)
    check_writable_folder(out)
    device = ranks.join(pick_device(args.device))
    # every process looks before any writes, and all follow what the first one saw
    written = ranks.gather([n for n in RESULT_FILES if (out / n).exists()])[0]
    if written and not args.overwrite:
        raise FileExistsError(f"{out} already holds results ({', '.join(written)}); choose another --out or pass "
                              f"--overwrite")
    rank, size = ranks.world()
    report = (lambda line: print(line, file=sys.stderr)) if rank == 0 else (lambda line: None)
    wanted = [m for m in eval_models.METRIC_MODELS if m not in skip]
    skipped = {m: "--skip" for m in skip}
    models = eval_models.load(wanted, clap_checkpoint=args.clap_checkpoint, metric_weights=args.metric_weights,
                              device=str(device), offline=offline_default(), report=report,
                              hints=HINTS, skipped=skipped)
    if "notes" in models:
        check_midi(songs)  # a bad MIDI file is said now, not after hours of editing
    editor = Editor.from_pretrained(args.base, args.adapter, args.t5, args.encodec, device=device, dtype=args.dtype,
                                    offline=True if args.offline else None, progress=_stage_bars())
    if batch == "auto":  # a clip's audio: its input, target and edit at 44.1 kHz, and their metrics
        batch = _auto_batch_size(editor, settings.sampling, int(settings.seconds * 44100 * 4 * 16))
    settings = dataclasses.replace(settings, batch=batch)
    report(f"clips decoded together: up to {batch} (those with one instruction)")
    summary = evaluate(editor, settings, models, keep_audio=not args.no_audio, songs=songs,
                       progress=_progress_bar(f"clips (process {rank})" if size > 1 else "clips", unit="clip"),
                       skipped=skipped)
    ranks.leave()
    if summary is not None:
        print(markdown(summary, skipped), end="")
        report(f"wrote {out}/clips.csv, clips.jsonl, summary.json, summary.md")
    return 0


def parser() -> argparse.ArgumentParser:
    from . import defaults
    from .eval_models import CLAP_FILE, CLAP_REPO, METRIC_MODELS
    from .evaluate import EvalSettings
    from .ranks import REPRODUCIBLE_THREADS
    from .render import RENDER_MODES
    from .sampling import MAX_BATCH, Sampling
    from .take import DEFAULT_FADE_SECONDS
    run = EvalSettings("", "", "")
    p = argparse.ArgumentParser(prog="imgen", description="Edit music by instruction with Instruct-MusicGen.",
                                epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("edit", help="edit an audio file", epilog=EPILOG,
                       description="Edit a song of any length: add, remove or extract a stem. Many files: "
                                   "give several inputs or a folder and an output folder; spread them over "
                                   "processes or GPUs with torchrun --nproc_per_node N -m imgen_core.cli edit ...")
    e.add_argument("input", nargs="+", help="input audio file (wav, flac, ogg, ...; any rate and channel count); "
                   "or several files or folders of them")
    e.add_argument("-o", "--output", required=True, help="output file (.wav, .flac or .ogg); with several inputs or a "
                   "folder, an output folder: each file keeps its name there, outputs already written are skipped "
                   "(rerun to continue after an interruption)")
    e.add_argument("--render", default="auto", choices=RENDER_MODES,
                   help="auto (default): preserve for --op add, remove or extract (or an --instruction that "
                   "is one of their texts), model for any other free-text --instruction. preserve: the edit applied "
                   "to the original at its own rate and channels, all it did not ask to change kept; model: the "
                   "model's 32 kHz mono output")
    e.add_argument("--start", type=float, help="edit only from this second on (default: the start)")
    e.add_argument("--end", type=float, help="edit only up to this second (default: the end); outside the range "
                   "and its fades every sample is the input's")
    e.add_argument("--fade", type=float, default=DEFAULT_FADE_SECONDS, help="seconds of cross-fade at each end of "
                   f"the range (default {DEFAULT_FADE_SECONDS})")
    e.add_argument("--rate", help="with --render model over the whole song: output sample rate, model (32000, "
                   "default), input, or Hz")
    e.add_argument("--channels", choices=["input", "mono"],
                   help="with --render model over the whole song: input: the mono result on each of the input's "
                   "channels (default); mono: one channel")
    e.add_argument("--op", choices=instructions.OPERATIONS, help="edit operation")
    e.add_argument("--stem", help="stem to act on (e.g. drums, bass, piano, guitar for the Slakh checkpoint)")
    e.add_argument("--instruction", help="free-text instruction instead of --op/--stem (advanced)")
    _add_model_args(e)
    e.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    e.add_argument("--batch", default="auto", help=f"with several files: how many songs are decoded together, "
                   f"1 to {MAX_BATCH}, or auto (from the device's total memory, at most {AUTO_BATCH}). Each song keeps "
                   "its own random draws; songs edited with another batch size can differ by float rounding only")
    _add_generation_args(e, f"default: every core for one file; {REPRODUCIBLE_THREADS} for several, so that each "
                         "file's result is the same whatever the number of processes a run is spread over")
    e.set_defaults(func=cmd_edit)

    c = sub.add_parser("convert", help="convert the official finetuned.ckpt to one compact model file",
                       description="Read the official Lightning checkpoint without executing anything "
                                   "from it and write only what inference needs as safetensors: the whole model "
                                   "(the LM in fp16 as released, the adapter as trained), which runs with no "
                                   "base file. Editing converts the checkpoint by itself on first use; this is "
                                   "for keeping the compact file and dropping the 14.6 GB checkpoint.")
    c.add_argument("checkpoint", help="official finetuned.ckpt")
    c.add_argument("-o", "--output", required=True, help="output .safetensors")
    c.add_argument("--base", help=f"base MusicGen whose config (heads, sizes) the checkpoint's LM has: config.json, "
                   f"state_dict.bin, a folder or a HF repo (default {defaults.BASE}; only its config is read)")
    c.add_argument("--adapter-only", action="store_true",
                   help="write only the fusion and LoRA weights (3.5 GB for the released model), which then need the "
                   "base's weights at every use; default: the whole model in one file (8.8 GB), nothing else needed")
    c.add_argument("--offline", action="store_true", help="never use the network")
    c.add_argument("--dialect", default="slakh", choices=sorted(instructions.DIALECTS), help="instruction templates it was trained with")
    c.add_argument("--stems", help="comma-separated stem vocabulary (default: the dialect's)")
    c.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    c.set_defaults(func=cmd_convert)

    t = sub.add_parser("train", help="instruction-tune the fusion modules and LoRA on stems",
                       description="Train an adapter from a YAML/JSON config (see imgen_core/train.py, TrainConfig). "
                                   "Several GPUs or processes: torchrun --nproc_per_node N -m imgen_core.cli train ...")
    t.add_argument("--config", required=True, help="training config (.yaml or .json)")
    t.add_argument("--resume", help="a step_N checkpoint folder to continue from")
    t.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier run wrote in out_dir past the step this run starts from")
    t.add_argument("--encode-only", action="store_true",
                   help="only the pre-encoding pass: store the EnCodec codes of every sample in cache_dir")
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("eval", help="the paper's evaluation on the test songs of a stem dataset", epilog=EPILOG,
                       description="Build one 5 s test triplet per song and operation (the training rules, "
                                   "seeded), edit each, and score it: SSIM of 16 kHz mel spectrograms, SI-SDR and "
                                   "SI-SDRi (remove, extract) (these need torchmetrics), CLAP score, FAD (VGGish) and "
                                   "KL (PANNs) when their models can be had (all from the eval extra: pip install "
                                   "'.[eval]' in the project; summary.md says which were not computed), and note "
                                   "precision, recall and F1 against the stems' MIDI (Slakh layout) when basic-pitch's "
                                   "note model can run (pip install --no-deps basic-pitch onnxruntime mir_eval "
                                   "mido). Writes per-clip "
                                   "rows and a summary per operation and stem. Several processes or GPUs: "
                                   "torchrun --nproc_per_node N -m imgen_core.cli eval ...")
    v.add_argument("--data", required=True, help="dataset root (the test split)")
    v.add_argument("--layout", required=True, choices=["slakh", "moisesdb", "folders"], help="dataset layout")
    ops = ",".join(run.operations)
    v.add_argument("--ops", default=ops, help=f"operations to evaluate (default {ops})")
    v.add_argument("--out", required=True, help="output folder for the results and the clips' audio")
    v.add_argument("--classes", help="comma-separated target stems (default: the adapter's)")
    v.add_argument("--seconds", type=float, default=run.seconds, help=f"clip length (default {run.seconds:g}, the paper's)")
    v.add_argument("--limit", type=int, help="only the first N songs per operation")
    v.add_argument("--every-stem", action="store_true",
                   help="one clip per song, operation and target stem present (default: one per song and operation, "
                        "its stem drawn, as the paper)")
    v.add_argument("--batch", default="auto", help=f"clips decoded together (those of one instruction), 1 to "
                   f"{MAX_BATCH}, or auto (from the device's total memory, at most {AUTO_BATCH}); results differ from "
                   "one batch size to another by float rounding only")
    v.add_argument("--render", default=run.render, choices=RENDER_MODES,
                   help=f"how the edit is rendered (default {run.render}: the model's output, as the paper scored it)")
    v.add_argument("--skip", help=f"comma-separated metrics not to compute among {', '.join(METRIC_MODELS)}")
    v.add_argument("--clap-checkpoint", help=f"local LAION-CLAP checkpoint (default: {CLAP_REPO}/{CLAP_FILE} "
                   "from Hugging Face)")
    v.add_argument("--metric-weights", metavar="DIR",
                   help="folder of the VGGish (FAD) and PANNs (KL) weights, in torch hub's layout: read from there, "
                        "downloaded into it when missing and online (default: torch's hub folder, "
                        "~/.cache/torch/hub or $TORCH_HOME/hub)")
    v.add_argument("--no-audio", action="store_true", help="do not keep the clips' audio")
    v.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    _add_model_args(v)
    _add_generation_args(v, f"default {run.threads}, so that each clip's result is the same whatever the number "
                         "of processes the run is spread over")
    v.set_defaults(func=cmd_eval)

    m = sub.add_parser("make-dataset", help="render multitrack songs from MIDI in Slakh2100's layout",
                       description="Write songs (drums, bass, piano, guitar in most, strings, organ, synths, brass, "
                                   "reed... in some; varied grooves, keys, tempos and programs) rendered stem by stem "
                                   "with a General MIDI SoundFont, in Slakh2100's layout (metadata.yaml, stems/, "
                                   "MIDI/, all_src.mid, mix.flac) or MoisesDB's. Deterministic for a seed. Needs "
                                   "tinysoundfont (pip install --no-deps tinysoundfont) and a SoundFont: FluidR3 "
                                   "(apt-get install fluid-soundfont-gm) or pretty_midi's TimGM6mb (pip install "
                                   "pretty_midi).")
    m.add_argument("out", help="a new or empty folder")
    m.add_argument("--songs", type=int, default=10, help="how many songs (default 10)")
    m.add_argument("--seconds", type=float, default=30.0, help="each song's length (default 30)")
    m.add_argument("--seed", type=int, default=0, help="the same seed writes the same files (default 0)")
    m.add_argument("--layout", default="slakh", choices=["slakh", "moisesdb"], help="folder layout (default slakh)")
    m.add_argument("--font", help="a General MIDI SoundFont (.sf2) to render with (default: FluidR3 GM if "
                   "installed, else pretty_midi's TimGM6mb)")
    m.set_defaults(func=cmd_make_dataset)

    from . import parts
    ms = sub.add_parser("models", help="list the released model's parts: present or missing, sizes, licences",
                        description="Each part of the released model: what it is, where it comes from, its size and "
                                    "licence, when it is needed, and whether it is in the weights folder (or the "
                                    "Hugging Face cache).")
    ms.add_argument("--dir", help="weights folder to look in (default: IMGEN_WEIGHTS)")
    ms.set_defaults(func=cmd_models)
    dl = sub.add_parser("download", help="download the released model's parts (resumable, verified)",
                        description="Download what is missing of the released model into the weights folder, or "
                                    "into --to DIR to carry to a machine without internet (then set IMGEN_WEIGHTS=DIR "
                                    "there). An interrupted download continues where it stopped when run again; "
                                    "each file is checked against the hub's hash before it takes its name.")
    dl.add_argument("parts", nargs="*", help=f"parts to fetch among {', '.join(parts.BY_KEY)} (default: "
                         f"{', '.join(p.key for p in parts.NEEDED)}, what editing needs)")
    dl.add_argument("--to", help="folder to download into (default: IMGEN_WEIGHTS)")
    dl.set_defaults(func=cmd_download)

    mt = sub.add_parser("make-tiny", help="write a tiny random model (LM, adapter, T5, EnCodec) to try things offline",
                        description="Write a tiny random model in the real file formats. With --like, its T5 and "
                                    "EnCodec fit another model file (the text width and codebook size of a whole-"
                                    "model .safetensors or an official-format .ckpt, such as a small test "
                                    "checkpoint), so that that file can be edited here without downloading anything.")
    mt.add_argument("out", help="a new or empty folder")
    mt.add_argument("--like", help="a model file whose text width and codebook size the parts take")
    mt.set_defaults(func=cmd_make_tiny)

    d = sub.add_parser("demo", help="offline self-check with a tiny random model")
    d.add_argument("-o", "--output", default=DEMO_OUTPUT, help=f"output WAV (default {DEMO_OUTPUT}; when it is there "
                   "already, the next free imgen_demo_N.wav)")
    d.add_argument("--seconds", type=float, default=2.0, help="length of the synthesized clip (default 2)")
    d.add_argument("--seed", type=int, default=Sampling().seed)
    d.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    d.set_defaults(func=cmd_demo)
    return p


def _stop_on_terminate(signum, frame):
    raise KeyboardInterrupt("terminated")  # so that files being written are removed on the way out


def main(argv=None) -> int:
    import signal
    import threading

    from . import torch_problem
    problem = torch_problem()  # before anything imports torch's users
    if problem:
        print(f"imgen: error: {problem}", file=sys.stderr)
        return 2
    args = parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_terminate)
    from .audio import AudioError
    from .checkpoints import CheckpointError
    from .config import ConfigError
    from .data import DatasetError
    from .errors import setting_of
    if getattr(args, "offline", False):
        from .hub import go_offline
        go_offline()
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, PermissionError, AudioError, CheckpointError, ConfigError,
            DatasetError, ValueError) as e:
        hint = HINTS.get(setting_of(e))
        print(f"imgen {args.command}: error: {e}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 2
    except OSError as e:  # the disk or the system said no (full, read-only, too many files...)
        where = f" ({e.filename})" if e.filename else ""
        print(f"imgen {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = " (the files finished are kept: rerun to continue)" if getattr(args, "many", False) else ""
        print(f"\nimgen {args.command}: interrupted; nothing was written of the file in progress{kept}",
              file=sys.stderr)  # on a line of its own, after any progress bar
        return 130


if __name__ == "__main__":
    sys.exit(main())
