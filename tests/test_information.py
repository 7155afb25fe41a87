"""End to end, what a user relies on: the output depends on the input, the instruction and the
seed; decoding follows the codes; windows continue each other. The tiny components carry
information (imgen_core/tiny.py), so a broken pipeline changes these results."""
import torch

from imgen_core.generate import generate
from imgen_core.sampling import Sampling
from imgen_core.windows import edit_windowed
from support import chord, differs

SR = 32000


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def test_distinct_clips_give_distinct_codes(tiny_editor):
    a, b = tiny_editor.encode(chord(2.0, 220.0), SR).codes, tiny_editor.encode(chord(2.0, 330.0), SR).codes
    assert differs(a, b) > 0.5
    for k in range(a.shape[1]):
        assert len(a[0, k].unique()) > 4, "a codebook stuck on a few codes"


def test_decoding_follows_the_codes(tiny_editor):
    codes = tiny_editor.encode(chord(2.0, 220.0), SR).codes
    other = tiny_editor.encode(chord(2.0, 330.0), SR).codes
    wav = tiny_editor.decode(codes)
    assert torch.equal(wav, tiny_editor.decode(codes))
    assert relative_difference(wav, tiny_editor.decode(other)) > 0.3
    assert wav.std() > 0.05, "decoded audio is nearly constant"
    changed = codes.clone()
    changed[..., 60:70] = other[..., 60:70]
    assert relative_difference(wav, tiny_editor.decode(changed)) > 0.01


def _edit(editor, wav, op="remove", stem="drums", seed=0):
    return editor.edit(editor.encode(wav, SR), editor.instruction(op, stem), Sampling(seed=seed)).codes


def test_the_edit_depends_on_the_input(tiny_editor):
    a, b = _edit(tiny_editor, chord(2.0, 220.0)), _edit(tiny_editor, chord(2.0, 330.0))
    assert differs(a, b) > 0.3
    assert relative_difference(tiny_editor.decode(a), tiny_editor.decode(b)) > 0.3


def test_the_edit_depends_on_the_instruction(tiny_editor):
    song = chord(2.0, 220.0)
    removed = _edit(tiny_editor, song, "remove", "drums")
    assert differs(removed, _edit(tiny_editor, song, "add", "bass")) > 0.3
    assert differs(removed, _edit(tiny_editor, song, "remove", "piano")) > 0.3


def test_the_edit_depends_on_the_seed_and_the_same_seed_repeats(tiny_editor):
    song = chord(2.0, 220.0)
    first = _edit(tiny_editor, song, seed=1)
    assert torch.equal(first, _edit(tiny_editor, song, seed=1))
    assert differs(first, _edit(tiny_editor, song, seed=2)) > 0.3


def test_chained_edits_differ_from_a_single_edit(tiny_editor):
    take = tiny_editor.encode(chord(2.0, 220.0), SR)
    extracted = tiny_editor.edit(take, tiny_editor.instruction("extract", "drums"))
    chained = tiny_editor.edit(extracted, tiny_editor.instruction("add", "bass"))
    assert differs(chained.codes, extracted.codes) > 0.3
    assert differs(chained.codes, tiny_editor.edit(take, tiny_editor.instruction("add", "bass")).codes) > 0.3
    assert chained.operations == ("extract", "add") and torch.equal(chained.original_codes, take.codes)


def test_windows_are_the_model_run_on_exactly_the_right_spans(tiny_editor):
    """Three windows of W = 60 frames with O = 20 of overlap over 130 frames, computed here by
    hand: [0, 60); [40, 100) with frames 40-59 as its prompt; and the last, [70, 130), with
    frames 70-99 as its prompt. Any shift of a boundary changes the tokens."""
    model = tiny_editor.model
    codes = tiny_editor.encode(chord(130 / 50, 220.0), SR).codes
    assert codes.shape[-1] == 130
    text = tiny_editor.text_condition([tiny_editor.instruction("remove", "drums")])
    # Sampled, not greedy: a random model's greedy tokens soon repeat one code whatever it sees.
    sampling, g = Sampling(guidance=3.0, top_k=100), torch.Generator().manual_seed(7)
    by_hand = generate(model, codes[..., :60], text, sampling, generator=g)
    second = generate(model, codes[..., 40:100], text, sampling, generator=g, prompt=by_hand[..., 40:60])
    by_hand = torch.cat([by_hand, second[..., 20:]], dim=-1)
    third = generate(model, codes[..., 70:130], text, sampling, generator=g, prompt=by_hand[..., 70:100])
    by_hand = torch.cat([by_hand, third[..., 30:]], dim=-1)
    g.manual_seed(7)
    windowed = edit_windowed(model, codes, text, sampling, window=60, overlap=20, generator=g)
    assert torch.equal(windowed, by_hand)


def test_a_song_whose_halves_differ(tiny_editor):
    """Windowed editing of 12 s whose second half changes (in its codes, so that nothing else
    differs): the output's first window is untouched, its second half changes, and the decoded
    output has no jump at a window boundary larger than the jumps inside the windows."""
    codes = tiny_editor.encode(torch.cat([chord(6.0, 220.0), chord(6.0, 330.0)], dim=-1), SR).codes
    other = codes.clone()
    other[..., 300:] = tiny_editor.encode(chord(12.0, 185.0), SR).codes[..., 300:]
    text = tiny_editor.instruction("remove", "drums")
    a, b = tiny_editor.edit_codes(codes, text, Sampling(seed=4)), tiny_editor.edit_codes(other, text, Sampling(seed=4))
    assert a.shape[-1] == 600
    assert torch.equal(a[..., :250], b[..., :250])  # the first 5 s window sees the same first half
    assert differs(a[..., 350:], b[..., 350:]) > 0.2
    assert differs(a[..., :300], a[..., 300:]) > 0.2
    wav = tiny_editor.decode(a)[0, 0]
    hop = tiny_editor.codec.hop
    jumps = (wav[1:] - wav[:-1]).abs()
    starts = [250 * hop, 400 * hop, 550 * hop]  # where windows 2-4 begin generating (5 s, 2 s overlap)
    at_boundaries = jumps[torch.tensor(starts) - 1]
    inside = jumps.clone()
    inside[torch.tensor(starts) - 1] = 0
    assert at_boundaries.max() <= inside.max()


def test_the_decoded_edit_follows_the_input_length_and_is_not_constant(tiny_editor):
    out, rate = tiny_editor.edit_audio(chord(3.0, 220.0, sr=44100, channels=2), 44100,
                                       tiny_editor.instruction("remove", "drums"), render="model", rate="input")
    assert out.shape == (1, 2, 3 * 44100) and rate == 44100
    assert out.std() > 0.05
