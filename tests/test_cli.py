"""The imgen command line, end to end with tiny models."""
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from imgen_core.audio import write_audio
from imgen_core.cli import main
from imgen_core.synthetic import song
from support import REPO, tiny_args, tone


def test_demo_writes_a_32k_file_of_the_expected_length(tmp_path, capsys):
    out = tmp_path / "demo.wav"
    assert main(["demo", "-o", str(out), "--seconds", "1.5"]) == 0
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames) == (32000, 1, 48000)
    assert main(["demo", "-o", str(out)]) == 2  # never overwritten without asking
    assert sf.info(str(out)).frames == 48000


def test_demo_run_again_writes_the_next_free_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--seconds", "0.5"]) == 0
    first = (tmp_path / "imgen_demo.wav").read_bytes()
    assert main(["demo", "--seconds", "0.5"]) == 0
    assert "imgen_demo.wav is there already (an earlier run's); writing imgen_demo_2.wav" in capsys.readouterr().err
    assert (tmp_path / "imgen_demo.wav").read_bytes() == first and (tmp_path / "imgen_demo_2.wav").is_file()


def test_a_usage_error_exits_2_with_the_error_prefix(tmp_path, capsys):
    assert main(["edit", str(tmp_path / "x.wav"), "-o", str(tmp_path / "y.wav")]) == 2
    assert "imgen edit: error: give either --op and --stem, or --instruction" in capsys.readouterr().err


def test_help_says_what_render_auto_does(capsys):
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "auto (default): preserve for --op add, remove or extract (or an --instruction that is one of their " \
        "texts), model for any other free-text --instruction" in text


def test_a_single_edit_and_a_conversion_create_a_missing_output_folder(tmp_path, tiny_files, stereo_wav):
    from support import fixture_dir
    out = tmp_path / "new" / "deeper" / "out.wav"
    assert main(["edit", str(stereo_wav), "--op", "remove", "--stem", "drums", "-o", str(out),
                 *tiny_args(tiny_files)]) == 0
    assert sf.info(str(out)).frames > 0
    converted = tmp_path / "models" / "adapter.safetensors"
    ckpt = fixture_dir("instruct_musicgen_tiny") / "instruct_checkpoint.ckpt"
    assert main(["convert", str(ckpt), "-o", str(converted), "--adapter-only"]) == 0
    assert converted.is_file()


def test_demo_says_plainly_that_random_weights_give_noise(tmp_path, capsys):
    main(["demo", "-o", str(tmp_path / "d.wav"), "--seconds", "0.5"])
    err = " ".join(capsys.readouterr().err.split())
    assert "TINY RANDOM model" in err and "random weights make noise" in err


def test_demo_checks_that_the_pipeline_carries_information(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "d.wav")]) == 0
    err = capsys.readouterr().err
    for what in ("depends on the input", "depends on the instruction", "is not constant"):
        assert f"checked: the output {what}" in err or f"checked: the decoded audio {what}" in err, err
    assert "FAILED" not in err


def test_demo_edits_rendered_music_or_says_that_tones_stand_in(tmp_path, capsys, monkeypatch):
    import sys
    from imgen_core.synthesis import MissingPart, prepare
    try:
        font = prepare()
    except MissingPart:
        font = None
    if font is not None:
        assert main(["demo", "-o", str(tmp_path / "a.wav"), "--seconds", "1.0"]) == 0
        assert f"s rendered ({font.name}) stereo 44.1 kHz clip" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tinysoundfont", None)  # as on a machine without it
    assert main(["demo", "-o", str(tmp_path / "b.wav"), "--seconds", "1.0"]) == 0
    err = capsys.readouterr().err
    assert "synthetic tones stand in for music (rendering music needs tinysoundfont" in err
    assert "s synthesized stereo 44.1 kHz clip" in err


@pytest.fixture
def stereo_wav(tmp_path):
    path = tmp_path / "in.wav"
    write_audio(path, tone(2.0, 44100, channels=2, freq=220.0, level=0.4, spread=0.5), 44100)
    return path


def test_cli_edit_with_tiny_model(tmp_path, tiny_files, stereo_wav):
    before = stereo_wav.read_bytes()
    out = tmp_path / "out.wav"
    assert main(["edit", str(stereo_wav), "--op", "remove", "--stem", "drums", "-o", str(out), "--seed", "4",
                 *tiny_args(tiny_files)]) == 0
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, 88200)  # preserve: the input's form
    data, _ = sf.read(str(out))
    assert math.isfinite(float(abs(data).max()))
    assert stereo_wav.read_bytes() == before  # the input is never modified
    out2 = tmp_path / "free.wav"
    assert main(["edit", str(stereo_wav), "--instruction", "Music piece. Instruct: Only Bass.", "-o", str(out2),
                 "--render", "model", "--rate", "input", "--channels", "mono", *tiny_args(tiny_files)]) == 0
    info = sf.info(str(out2))
    assert (info.samplerate, info.channels, info.frames) == (44100, 1, 88200)
    out3 = tmp_path / "model.wav"
    assert main(["edit", str(stereo_wav), "--instruction", "make it jazzy", "-o", str(out3),
                 *tiny_args(tiny_files)]) == 0  # free text: the model's output, at 32 kHz by default
    info = sf.info(str(out3))
    assert (info.samplerate, info.channels, info.frames) == (32000, 2, 64000)


def test_cli_edit_refusals(tmp_path, tiny_files, stereo_wav, capsys):
    out = tmp_path / "out.wav"
    assert main(["edit", str(stereo_wav), "--op", "add", "--stem", "vocals", "-o", str(out), *tiny_args(tiny_files)]) == 2
    assert "valid stems: drums, bass, piano, guitar" in capsys.readouterr().err
    assert not out.exists()
    assert main(["edit", str(tmp_path / "missing.wav"), "--op", "add", "--stem", "bass", "-o", str(out),
                 *tiny_args(tiny_files)]) == 2
    assert "audio file not found" in capsys.readouterr().err
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 10)
    assert main(["edit", str(garbage), "--op", "add", "--stem", "bass", "-o", str(out), *tiny_args(tiny_files)]) == 2
    err = capsys.readouterr().err
    assert "garbage.wav cannot be read as audio: " in err and "Readable: WAV, FLAC" in err
    assert "does not exist" not in err and "possibly a pipe" not in err
    assert not out.exists()


def test_the_input_is_never_the_output_not_even_with_overwrite(tmp_path, tiny_files, stereo_wav, capsys):
    before = stereo_wav.read_bytes()
    link = tmp_path / "link.wav"
    link.symlink_to(stereo_wav)
    for output in (stereo_wav, tmp_path / "." / "in.wav", link):
        for extra in ([], ["--overwrite"]):
            assert main(["edit", str(stereo_wav), "--op", "remove", "--stem", "drums", "-o", str(output), *extra,
                         *tiny_args(tiny_files)]) == 2
            assert "is the input file" in capsys.readouterr().err
    assert stereo_wav.read_bytes() == before and link.is_symlink()


def test_writing_never_follows_a_planted_link(tmp_path):
    from imgen_core.audio import write_audio
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out.wav"
    (tmp_path / "out.wav.part").symlink_to(victim)
    write_audio(out, torch.zeros(1, 3200), 32000)
    assert victim.read_text() == "keep me"
    assert sf.info(str(out)).frames == 3200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav", "out.wav.part", "victim.txt"]


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    import soundfile
    from imgen_core.audio import write_audio

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(soundfile.SoundFile, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        write_audio(tmp_path / "out.wav", torch.zeros(1, 320), 32000)
    assert list(tmp_path.iterdir()) == []


def test_missing_weights_name_the_file_and_every_place_looked(tmp_path, stereo_wav, capsys, monkeypatch):
    """A repo that is not one of the released parts: the places looked in are named."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("IMGEN_WEIGHTS", str(tmp_path / "weights"))
    out = tmp_path / "out.wav"
    assert main(["edit", str(stereo_wav), "--op", "add", "--stem", "bass", "-o", str(out),
                 "--adapter", "someone/another-adapter", "--offline"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "could not find finetuned.ckpt" in err
    assert "local path 'someone/another-adapter'" in err and "Hugging Face cache" in err and "offline" in err


def test_console_script_is_installed():
    exe = shutil.which("imgen")
    cmd = [exe] if exe else [sys.executable, "-m", "imgen_core.cli"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "edit" in out.stdout and "convert" in out.stdout and "demo" in out.stdout


def test_written_files_get_the_usual_permissions_and_logs_refuse_links(tmp_path):
    from imgen_core.files import append_line, replacing
    umask = os.umask(0o022)
    os.umask(umask)
    write_audio(tmp_path / "out.wav", torch.zeros(1, 320), 32000)
    with replacing(tmp_path / "state.pt") as f:
        f.write(b"x")
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o666 & ~umask}  # not a private 0600
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "log.jsonl").symlink_to(victim)
    with pytest.raises(FileExistsError, match="symbolic link"):
        append_line(tmp_path / "log.jsonl", "{}")
    assert victim.read_text() == "keep me"


def test_a_folder_edit_interrupted_after_two_files_writes_only_the_other_three_on_rerun(
        tmp_path, tiny_files, monkeypatch, capsys):
    import imgen_core.cli as cli
    src = tmp_path / "songs"
    src.mkdir()
    for i in range(5):
        write_audio(src / f"song{i}.wav", tone(1.0, freq=110.0 + 40 * i, level=0.3), 32000)
    (src / "notes.txt").write_text("not audio: left alone")
    inputs = {p.name: p.read_bytes() for p in src.iterdir()}
    out = tmp_path / "edited"
    args = ["edit", str(src), "-o", str(out), "--op", "remove", "--stem", "drums", "--window", "1.0",
            "--overlap", "0.5", "--batch", "1", *tiny_args(tiny_files)]
    real_bar = cli._progress_bar

    def stop_at_the_third(desc, position=0):
        if desc == "song2.wav":
            raise KeyboardInterrupt  # as Ctrl-C while the third file is being edited
        return real_bar(desc, position)
    monkeypatch.setattr(cli, "_progress_bar", stop_at_the_third)
    assert main(args) == 130
    assert "rerun to continue" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["song0.wav", "song1.wav"]
    first = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    monkeypatch.setattr(cli, "_progress_bar", real_bar)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "2 of 5 outputs are already there" in err and err.count("wrote ") == 3
    assert sorted(p.name for p in out.iterdir()) == [f"song{i}.wav" for i in range(5)]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if p.name in first} == first
    assert {p.name: p.read_bytes() for p in src.iterdir()} == inputs  # inputs untouched
    outputs = [sf.read(str(out / f"song{i}.wav"))[0] for i in range(5)]
    assert not np.allclose(outputs[0], outputs[1])  # each file its own edit


def test_batch_edit_refusals(tmp_path, tiny_files, stereo_wav, capsys):
    other = tmp_path / "sub"
    other.mkdir()
    (other / "in.flac").write_bytes(b"")
    for args, words in (([str(stereo_wav), str(other / "in.flac"), "-o", str(stereo_wav)], "is a file"),
                        ([str(tmp_path), "-o", str(tmp_path)], "is the input file"),
                        ([str(stereo_wav), str(tmp_path / "missing.wav"), "-o", str(tmp_path / "o")],
                         "audio file not found")):
        assert main(["edit", *args, "--op", "remove", "--stem", "drums", *tiny_args(tiny_files)]) == 2
        assert words in capsys.readouterr().err, words


def test_cli_edits_a_long_file_and_leaves_it_untouched(tmp_path, tiny_files):
    path = tmp_path / "song.flac"
    sf.write(str(path), song(12.0, sample_rate=48000).numpy().T, 48000, subtype="PCM_24")
    before = path.read_bytes()
    out = tmp_path / "edited.wav"
    assert main(["edit", str(path), "--op", "remove", "--stem", "drums", "-o", str(out), "--rate", "input",
                 *tiny_args(tiny_files)]) == 0
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, 12 * 48000)
    assert path.read_bytes() == before


def test_option_defaults_are_the_librarys():
    """Every generation, window, fade, weight and evaluation default of the command line is the
    library's own (Sampling, take, defaults, EvalSettings), not a copy of it."""
    from imgen_core import defaults
    from imgen_core.cli import _sampling, parser
    from imgen_core.evaluate import EvalSettings
    from imgen_core.sampling import Sampling
    from imgen_core.take import DEFAULT_FADE_SECONDS
    edit = parser().parse_args(["edit", "in.wav", "-o", "out.wav", "--op", "add", "--stem", "bass"])
    run = parser().parse_args(["eval", "--data", "d", "--layout", "slakh", "--out", "o"])
    for args in (edit, run):
        assert _sampling(args) == Sampling()
        assert (args.base, args.adapter, args.t5, args.encodec) == (defaults.BASE, defaults.ADAPTER, defaults.T5,
                                                                    defaults.ENCODEC)
    assert edit.fade == DEFAULT_FADE_SECONDS
    settings = EvalSettings("d", "slakh", "o")
    assert (tuple(run.ops.split(",")), run.seconds, run.render) == (settings.operations, settings.seconds,
                                                                   settings.render)
    assert settings.sampling == Sampling()


def test_output_and_option_errors_come_before_the_model_loads(tmp_path, tiny_files, stereo_wav, capsys, monkeypatch):
    """Each of these is refused before any weight is read: with real weights on a CPU, an error
    found after the model loaded (or after every window was generated) costs hours."""
    import os

    from imgen_core.editor import Editor

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")
    monkeypatch.setattr(Editor, "from_pretrained", never)
    silent = tmp_path / "silent.wav"
    write_audio(silent, torch.zeros(2, 44100), 44100)
    unwritable = Path("/proc/1") if os.geteuid() == 0 else tmp_path / "locked"  # root may write anywhere else
    if unwritable != Path("/proc/1"):
        unwritable.mkdir()
        unwritable.chmod(0o555)
    out = str(tmp_path / "out.wav")
    blocked = tmp_path / "a-file"
    blocked.write_text("a file where a folder would go")
    cases = [(["-o", str(blocked / "out.wav")], "is a file, so"),
             (["-o", str(unwritable / "out.wav")], "folder is not writable"),
             (["-o", str(tmp_path / "out.mp3")], "unsupported output extension '.mp3'"),
             (["-o", out, "--render", "model", "--rate", "3"], "--rate takes model, input or a number of Hz"),
             (["-o", out, "--stem", "vocals"], "unknown stem 'vocals' for this checkpoint"),
             (["-o", out, "--window", "20"], "window must be from 0.04 to 10 s for this model"),
             (["-o", out, "--start", "0.5", "--rate", "48000"], "--rate and --channels apply to --render model"),
             (["-o", out, "--device", "cuda:99"], "there is no CUDA device 99 here")]
    for extra, says in cases:
        argv = ["edit", str(stereo_wav), "--op", "remove", "--stem", "drums", *tiny_args(tiny_files), *extra]
        assert main(argv) == 2, says
        err = capsys.readouterr().err
        assert says in err and "the model was loaded" not in err, (says, err)
    assert main(["edit", str(silent), "--op", "remove", "--stem", "drums", "-o", out, *tiny_args(tiny_files)]) == 2
    assert "is silent" in capsys.readouterr().err
    assert not Path(out).exists()


def test_a_folder_edited_into_itself_continues_on_rerun(tmp_path, tiny_files, capsys):
    """AIFF songs edited into their own folder get WAV results beside them; the same command run
    again skips them as done, instead of taking them for inputs (and refusing the batch). A WAV
    of the user's under such a name is never taken for a result."""
    songs = tmp_path / "songs"
    songs.mkdir()
    for i in range(2):
        sf.write(str(songs / f"s{i}.aiff"), tone(1.0, 32000, freq=200.0 + 90 * i, level=0.3).numpy().T, 32000)
    args = ["edit", str(songs), "-o", str(songs), "--op", "remove", "--stem", "drums", "--window", "1.0",
            "--overlap", "0.5", *tiny_args(tiny_files)]
    assert main(args) == 0
    assert capsys.readouterr().err.count("wrote ") == 2
    results = {p.name: p.read_bytes() for p in songs.glob("*.wav")}
    assert sorted(results) == ["s0.wav", "s1.wav"]
    from imgen_core.editor import Editor
    loads = []
    real = Editor.from_pretrained
    Editor.from_pretrained = lambda *a, **k: loads.append(1) or real(*a, **k)
    try:
        assert main(args) == 0
    finally:
        Editor.from_pretrained = real
    err = capsys.readouterr().err
    assert "all 2 outputs are already there (finished earlier): nothing to do" in err and "wrote " not in err
    assert loads == [] and "files" not in err  # checked before the model loads; no empty progress bar
    assert {p.name: p.read_bytes() for p in songs.glob("*.wav")} == results
    sf.write(str(songs / "s2.aiff"), tone(1.0, 32000, freq=440.0, level=0.3).numpy().T, 32000)
    sf.write(str(songs / "s2.wav"), tone(1.0, 32000, freq=550.0, level=0.3).numpy().T, 32000)  # the user's
    mine = (songs / "s2.wav").read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main([*args, *extra]) == 2
        assert "would both be written to" in capsys.readouterr().err
    assert (songs / "s2.wav").read_bytes() == mine


def test_a_folder_with_subfolders_says_they_are_not_edited(tmp_path, tiny_files, capsys):
    songs = tmp_path / "songs"
    (songs / "live").mkdir(parents=True)
    sf.write(str(songs / "a.wav"), tone(1.0, 32000, freq=200.0, level=0.3).numpy().T, 32000)
    sf.write(str(songs / "live" / "b.wav"), tone(1.0, 32000, freq=300.0, level=0.3).numpy().T, 32000)
    assert main(["edit", str(songs), "-o", str(tmp_path / "out"), "--op", "remove", "--stem", "drums", "--window",
                 "1.0", "--overlap", "0.5", *tiny_args(tiny_files)]) == 0
    err = capsys.readouterr().err
    assert f"note: {songs / 'live'} is a subfolder: only the files directly in the folders named are edited" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.wav"]


def _edit_folder(tiny_files, src, out, batch, processes=1):
    cmd = ["-m", "imgen_core.cli", "edit", str(src), "-o", str(out), "--op", "add", "--stem", "bass", "--window",
           "1.0", "--overlap", "0.4", "--batch", str(batch), *tiny_args(tiny_files)]
    if processes > 1:
        cmd = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", "29533", *cmd]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


def test_a_folder_is_decoded_in_batches_with_the_files_of_one_song_at_a_time_and_of_two_processes(tmp_path,
                                                                                                  tiny_files):
    """--batch 3 decodes the songs of a folder (of several lengths) three at a time; every file is
    the one --batch 1 writes (the tiny model rounds alike over 1 to 3 rows), a bad file among
    them is reported and the others are written, and two processes (taking whole batches) write
    the same bytes as one."""
    src = tmp_path / "songs"
    src.mkdir()
    for i, seconds in enumerate([1.0, 2.2, 1.0, 1.7, 3.0, 1.0, 1.3]):
        write_audio(src / f"song{i}.wav", tone(seconds, freq=110.0 + 40 * i, level=0.3), 32000)
    (src / "song9.wav").write_bytes(b"RIFF....WAVEfmt " + bytes(100))  # broken
    runs = {}
    for name, batch, processes in (("one", 1, 1), ("three", 3, 1), ("three-in-two", 3, 2)):
        run = _edit_folder(tiny_files, src, tmp_path / name, batch, processes)
        assert run.returncode == 1, run.stderr[-3000:]  # the broken file
        assert "song9.wav: error:" in run.stderr and f"songs decoded together: {batch}" in run.stderr
        runs[name] = {p.name: p.read_bytes() for p in (tmp_path / name).iterdir()}
        assert sorted(runs[name]) == [f"song{i}.wav" for i in range(7)], name
    assert runs["three"] == runs["one"]
    assert runs["three-in-two"] == runs["three"]
    assert len(set(runs["one"].values())) == 7


def test_the_batch_option_is_checked_before_the_model_loads(tmp_path, capsys):
    for bad in ("0", "65", "two", "-1"):
        assert main(["edit", "a.wav", "b.wav", "-o", str(tmp_path / "out"), "--op", "add", "--stem", "bass",
                     "--batch", bad]) == 2
        err = capsys.readouterr().err
        assert "--batch takes auto or a number of songs from 1 to 64" in err and "Traceback" not in err


def test_auto_batch_follows_the_devices_memory_and_the_largest_file(tmp_path, tiny_editor, monkeypatch):
    """--batch auto: a quarter of the total memory over each song's working memory plus its audio
    (3.6 times its samples as float32, rounded up to 4), at most 8; the audio read from the headers
    of the files still to edit."""
    import imgen_core.cli as cli
    from imgen_core.sampling import Sampling
    for i, seconds in enumerate([1.0, 3.0]):
        write_audio(tmp_path / f"s{i}.wav", tone(seconds, level=0.3), 32000)
    jobs = [(tmp_path / f"s{i}.wav", tmp_path / "out" / f"s{i}.wav") for i in range(2)]
    (tmp_path / "out").mkdir()
    assert cli._check_batch(jobs, False, lambda rate: None) == 3 * 32000 * 16
    write_audio(tmp_path / "out" / "s1.wav", tone(0.1), 32000)  # done earlier: not counted
    assert cli._check_batch(jobs, False, lambda rate: None) == 32000 * 16
    sampling = Sampling(window_seconds=1.0, overlap_seconds=0.5)
    assert cli._auto_batch_size(tiny_editor, sampling, 32000 * 16) == cli.AUTO_BATCH
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1 << 18}[name])  # 1 GiB
    per_song = (1 << 30) // 4 // 3  # three songs fit in a quarter
    from imgen_core import working_memory
    audio = per_song - working_memory.of_editor(tiny_editor, 1, sampling)
    assert cli._auto_batch_size(tiny_editor, sampling, audio) == 3
    assert cli._auto_batch_size(tiny_editor, sampling, 1 << 40) == 1


def test_a_logged_batch_run_has_no_cursor_codes_nor_library_bars(tmp_path, tiny_files):
    """stderr sent to a file (a batch job's log): no cursor-up codes from nested bars, and no
    "Loading weights" bars from transformers on every run."""
    songs = tmp_path / "songs"
    songs.mkdir()
    for i in range(2):
        sf.write(str(songs / f"s{i}.wav"), tone(1.0, 32000, freq=200.0 + 90 * i, level=0.3).numpy().T, 32000)
    run = _edit_folder(tiny_files, songs, tmp_path / "out", batch=1)
    assert run.returncode == 0, run.stderr
    assert "\x1b[A" not in run.stderr and "Loading weights" not in run.stderr, run.stderr[-2000:]
    assert run.stderr.count("wrote ") == 2


def test_an_official_format_checkpoint_can_be_converted_and_edited_without_writing_code(tmp_path, stereo_wav, capsys):
    """The journey with a small official-format checkpoint (a parity fixture): convert it, make tiny
    T5 and EnCodec parts that fit it, edit."""
    from support import fixture_dir
    fixture = fixture_dir("instruct_musicgen_tiny")
    model = tmp_path / "model.safetensors"
    assert main(["convert", str(fixture / "instruct_checkpoint.ckpt"), "-o", str(model), "--base",
                 str(fixture / "base_state_dict.bin"), "--offline"]) == 0
    assert "the whole model (runs without a base)" in capsys.readouterr().err
    assert main(["make-tiny", str(tmp_path / "parts"), "--like", str(model)]) == 0
    err = capsys.readouterr().err
    assert "T5 width 768, 64 codes per codebook" in err and "Writing model shards" not in err  # no library bar
    command = err.split("try: imgen ")[1].split()
    command = [str(stereo_wav) if a == "SONG.wav" else str(tmp_path / "out.wav") if a == "out.wav" else a
               for a in command]
    assert main(command) == 0, capsys.readouterr().err
    assert sf.info(str(tmp_path / "out.wav")).frames > 0


def test_offline_holds_for_every_library_of_the_run(tmp_path, monkeypatch):
    """--offline reaches libraries that read HF_HUB_OFFLINE once, at import (huggingface_hub, and
    through it the evaluation's models, which would otherwise retry an unreachable hub)."""
    import huggingface_hub.constants
    from support import fixture_dir
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    fixture = fixture_dir("instruct_musicgen_tiny")
    assert main(["convert", str(fixture / "instruct_checkpoint.ckpt"), "-o", str(tmp_path / "m.safetensors"),
                 "--base", str(fixture / "base_state_dict.bin"), "--offline"]) == 0
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"
