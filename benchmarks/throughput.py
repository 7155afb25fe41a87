"""Throughput of a batch edit: songs per hour when songs are decoded together, batch by batch
(`imgen edit` with several files, `--batch N`), against one at a time.

    python benchmarks/throughput.py                      # CPU, 2 threads, batches 1 2 4 8
    python benchmarks/throughput.py --device cuda --dtype fp16

MusicGen-small size with random weights (audio fusion in every layer), 10 s songs edited in the
product's windows (5 s re-reading 2 s: three windows, 508 decoding steps a song), guidance and
top-k sampling, each song drawing from its own seed. For each batch size one batch of that many
songs is timed (songs per hour = songs / seconds * 3600; audio seconds per second = 10 s * songs
/ seconds). Song 0 is in every batch: its tokens at each batch size are compared with its tokens
alone (matrix products over more rows round differently). A printed table and a JSON file whose
`rows` carry device, dtype, batch, seconds, songs_per_hour, audio_seconds_per_second and
token_agreement_with_batch_1.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import decode_speed  # noqa: E402
from imgen_core.sampling import Sampling  # noqa: E402
from imgen_core.windows import edit_songs  # noqa: E402

SONG_SECONDS, FRAME_RATE = 10.0, 50


def run_batch(model, songs, text, batch: int, device) -> tuple[float, list[torch.Tensor]]:
    sampling = Sampling(top_k=250)
    window, overlap = sampling.window_frames(FRAME_RATE, model.fusion.cfg.max_frames)
    generators = [torch.Generator(device=device).manual_seed(1000 + i) for i in range(len(songs))]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = edit_songs(model, songs, text, sampling, window=window, overlap=overlap, generators=generators, batch=batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="fp32, bf16, fp16, int8 (default: fp32 on the CPU, fp16 on CUDA)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--size", default="small", choices=list(decode_speed.SIZES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="throughput.json")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    cfg = decode_speed.SIZES[args.size]
    model = decode_speed.build_ours(cfg, device, name)
    act = decode_speed.activation_dtype(name, device)
    g = torch.Generator().manual_seed(0)
    most = max(args.batches)
    frames = int(SONG_SECONDS * FRAME_RATE)
    songs = [torch.randint(0, cfg.card, (cfg.n_q, frames), generator=g).to(device) for _ in range(most)]
    text = torch.randn(most, 12, cfg.dim, generator=g).to(device=device, dtype=act)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {args.threads} threads"
    run_batch(model, songs[:1], text[:1], 1, device)  # warm-up
    rows, alone = [], None
    print(f"# {machine}, torch {torch.__version__}, {args.size} size, {name}, {SONG_SECONDS:g} s songs")
    print(f"{'batch':>5} {'seconds':>8} {'songs/hour':>11} {'audio s/s':>10} {'x batch 1':>10} {'song 0 agrees':>14}")
    for batch in args.batches:
        seconds, out = run_batch(model, songs[:batch], text[:batch], batch, device)
        if alone is None and batch == 1:
            alone = out[0]
        agreement = float((out[0] == alone).float().mean()) if alone is not None else float("nan")
        row = {"device": str(device), "machine": machine, "dtype": name, "size": args.size, "batch": batch,
               "seconds": seconds, "songs_per_hour": batch / seconds * 3600,
               "audio_seconds_per_second": batch * SONG_SECONDS / seconds, "token_agreement_with_batch_1": agreement}
        rows.append(row)
        base = rows[0]["songs_per_hour"] if rows[0]["batch"] == 1 else float("nan")
        print(f"{batch:5d} {seconds:8.1f} {row['songs_per_hour']:11.1f} {row['audio_seconds_per_second']:10.3f} "
              f"{row['songs_per_hour'] / base:10.2f} {agreement:14.4f}", flush=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
