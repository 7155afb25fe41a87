"""Songs of any length: windowed editing in token space."""
import pytest
import torch

from imgen_core.generate import generate
from imgen_core.sampling import Sampling
from imgen_core.synthetic import song
from imgen_core.windows import plan_windows
from support import tone


@pytest.mark.parametrize("frames", [1, 2, 249, 250, 251, 400, 499, 3000, 30001])
@pytest.mark.parametrize("window, overlap", [(250, 100), (500, 150), (10, 9)])
def test_plan_covers_everything_with_enough_overlap(frames, window, overlap):
    plan = plan_windows(frames, window, overlap)
    assert plan[0].start == 0 and plan[0].prompt == 0 and plan[-1].end == frames
    for prev, cur in zip(plan, plan[1:]):
        assert cur.start + cur.prompt == prev.end  # generation resumes exactly where it stopped
        assert overlap <= cur.prompt < cur.frames <= window
    assert all(w.frames <= window for w in plan)


def test_bad_window_settings_are_refused(tiny_editor):
    codes = torch.zeros(1, 4, 30, dtype=torch.long)
    with pytest.raises(ValueError, match="window must be from 0.04 to 10 s for this model"):
        tiny_editor.edit_codes(codes, "x", Sampling(window_seconds=11.0))
    with pytest.raises(ValueError, match="overlap must be more than 0 and less than the window"):
        Sampling(window_seconds=2.0, overlap_seconds=2.0)


def test_sixty_seconds_of_stereo_44k_give_exactly_sixty_seconds(tiny_editor):
    take = tiny_editor.encode(song(60.0), 44100)
    assert take.codes.shape == (1, 4, 3000)
    seen, steps = [], []
    take = tiny_editor.edit(take, tiny_editor.instruction("remove", "drums"), Sampling(seed=1),
                            progress=lambda d, t: steps.append((d, t)), on_window=lambda w, c: seen.append((w, c)))
    edited = take.codes
    assert edited.shape == take.original_codes.shape
    assert len(seen) > 10 and steps[-1][0] == steps[-1][1]
    assert all(a[0] < b[0] for a, b in zip(steps, steps[1:]))  # one progress over all windows
    # every window after the first starts from the tokens already generated over its prompt
    for w, window_codes in seen[1:]:
        assert torch.equal(window_codes[..., :w.prompt], edited[..., w.start:w.start + w.prompt])
    for w, window_codes in seen:
        assert torch.equal(window_codes, edited[..., w.start:w.end])
    out, rate = tiny_editor.render(take, "model")
    assert (rate, out.shape) == (32000, (1, 2, 60 * 32000))
    out, rate = tiny_editor.render(take, "model", rate="input", channels="mono")
    assert (rate, out.shape) == (44100, (1, 1, 60 * 44100))
    assert torch.isfinite(out).all()


def test_windows_continue_the_previous_windows_tokens(tiny_editor):
    """The windowed result equals running the decode loop by hand, window after window, each with
    the previous windows' tokens as its prompt and the matching span of the input as condition."""
    codes = tiny_editor.encode(song(7.0), 44100).codes
    text = tiny_editor.instruction("add", "piano")
    sampling = Sampling(seed=7, window_seconds=3.0, overlap_seconds=1.0)
    edited = tiny_editor.edit_codes(codes, text, sampling)
    g = torch.Generator().manual_seed(7)
    cond = tiny_editor.text_condition([text])
    expected = torch.empty_like(codes)
    for w in plan_windows(codes.shape[-1], 150, 50):
        prompt = expected[..., w.start:w.start + w.prompt] if w.prompt else None
        out = generate(tiny_editor.model, codes[..., w.start:w.end], cond, Sampling(), prompt=prompt, generator=g)
        expected[..., w.start + w.prompt:w.end] = out[..., w.prompt:]
    assert torch.equal(edited, expected)


def _songs(editor, lengths):
    return [editor.encode(tone(s, freq=200 + 90 * i), 32000) for i, s in enumerate(lengths)]


def test_songs_decoded_together_get_the_tokens_each_gets_alone(tiny_editor, monkeypatch):
    """edit_many decodes window k of every song of a batch in the same steps (songs of other
    lengths leave when their windows run out, a shorter last window runs as its own group); each
    song draws from its own seed, so it gets the tokens editing it alone gives, at any batch size
    (exactly here: the tiny model's products round the same over 1 to 4 rows)."""
    from imgen_core import windows
    from imgen_core.editor import edit_many
    takes = _songs(tiny_editor, [1.0, 2.3, 1.0, 3.1, 1.6])
    sampling, seeds = Sampling(window_seconds=1.0, overlap_seconds=0.4), [11, 12, 13, 14, 15]
    text = tiny_editor.instruction("remove", "drums")
    alone = [tiny_editor.edit(t, text, Sampling(window_seconds=1.0, overlap_seconds=0.4, seed=s))
             for t, s in zip(takes, seeds)]
    assert len({a.codes[0, 0, :20].tolist().__repr__() for a in alone}) == 5  # different songs, different edits
    calls = {}
    real = windows.generate

    def counted(model, cond, *args, **kwargs):
        calls.setdefault(batch, []).append(cond.shape[0])
        return real(model, cond, *args, **kwargs)
    monkeypatch.setattr(windows, "generate", counted)
    for batch in (1, 2, 4):
        many = edit_many(tiny_editor, takes, text, sampling, batch=batch, seeds=seeds)
        for m, a in zip(many, alone):
            assert torch.equal(m.codes, a.codes) and m.operations == a.operations, batch
        assert max(calls[batch]) == batch  # the first windows of a batch's songs, together
    assert len(calls[4]) < len(calls[2]) < len(calls[1]) == sum(len(plan_windows(t.codes.shape[-1], 50, 20))
                                                                for t in takes)


def test_a_songs_tokens_do_not_depend_on_its_batch_mates(tiny_editor):
    from imgen_core.editor import edit_many
    takes = _songs(tiny_editor, [1.2, 1.2, 1.2, 1.2])
    text, sampling = tiny_editor.instruction("add", "bass"), Sampling(window_seconds=1.0, overlap_seconds=0.4)
    first = edit_many(tiny_editor, [takes[0], takes[1]], text, sampling, batch=2, seeds=[5, 6])[0]
    other = edit_many(tiny_editor, [takes[0], takes[2], takes[3]], text, sampling, batch=3, seeds=[5, 7, 8])[0]
    assert torch.equal(first.codes, other.codes)
    reseeded = edit_many(tiny_editor, [takes[0], takes[1]], text, sampling, batch=2, seeds=[9, 6])[0]
    assert not torch.equal(first.codes, reseeded.codes)


def test_the_throughput_benchmark_reports_its_rows(tmp_path):
    """benchmarks/throughput.py at tiny size: the JSON rows its README table comes from."""
    import json
    import subprocess
    import sys

    from support import REPO
    out = tmp_path / "throughput.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--size", "tiny", "--batches",
                          "1", "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"device", "batch", "songs_per_hour", "audio_seconds_per_second"} <= set(r)
        assert r["songs_per_hour"] > 0 and r["token_agreement_with_batch_1"] == 1.0
