"""Instruction tuning: only the fusion parameters and LoRA learn; the base MusicGen, T5 and EnCodec
stay frozen. One process or many (torchrun: DDP over gloo on CPU, NCCL on GPU).

    imgen train --config train.yaml
    torchrun --nproc_per_node 4 -m imgen_core.cli train --config train.yaml

The feed of samples is feed.py (its order is a function of the seed and the step, so a resumed
run continues exactly), what a run saves and resumes from is train_state.py; this module holds
the settings, the loss and the loop.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import defaults, plain_text, ranks, train_state
from .audio import write_audio
from .data import READERS, SAMPLE_RATE, TripletDataset, read_songs
from .editor import Editor
from .feed import TripletFeed
from .errors import about
from .files import append_line, check_writable_folder, replacing
from .instructions import DIALECTS, OPERATIONS, default_stems
from .loader import NewAdapter
from .sampling import Sampling


@dataclass
class TrainConfig:
    out_dir: str
    dataset_root: str
    dataset_layout: str = "slakh"          # slakh, moisesdb or folders
    classes: list[str] = field(default_factory=lambda: list(default_stems("slakh")))
    dialect: str = "slakh"
    operations: list[str] = field(default_factory=lambda: list(OPERATIONS))
    seconds: float = 5.0
    base: str = defaults.BASE               # state_dict.bin, its folder or a HF repo
    t5: str = defaults.T5
    encodec: str = defaults.ENCODEC
    init_adapter: str | None = None        # start from an adapter instead of zero gates
    fusion_layers: int | None = None       # adapters on the last N LM layers (default: all)
    steps: int = 5000
    batch_size: int = 8
    grad_accum: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    schedule_steps: int = 10_000
    grad_clip: float = 2.0
    precision: str = "fp32"                # fp32, fp16 or bf16 (mixed precision)
    text_dropout: float = 0.0              # drop the instruction with this probability (for guidance)
    seed: int = 0
    num_workers: int = 2
    save_every: int = 500
    log_every: int = 10
    val_every: int = 500
    val_samples: int = 2
    device: str = "auto"
    cache_dir: str | None = None           # EnCodec codes of the crops, computed once and reused

    def __post_init__(self):
        """Every setting of the right kind and in range, so a bad config is refused at once."""
        for name in ("out_dir", "dataset_root", "base", "t5", "encodec", "device"):
            _setting(self, name, isinstance(getattr(self, name), str) and getattr(self, name), "a non-empty text")
        for name in ("init_adapter", "cache_dir"):
            _setting(self, name, getattr(self, name) is None or isinstance(getattr(self, name), str), "a text")
        _setting(self, "dataset_layout", self.dataset_layout in READERS, f"one of {', '.join(READERS)}")
        _setting(self, "dialect", self.dialect in DIALECTS, f"one of {', '.join(DIALECTS)}")
        _setting(self, "precision", self.precision in ("fp32", "fp16", "bf16"), "fp32, fp16 or bf16")
        _setting(self, "classes", isinstance(self.classes, list) and self.classes
                 and all(isinstance(c, str) and c for c in self.classes), "a list of stem names")
        _setting(self, "operations", isinstance(self.operations, list) and self.operations
                 and all(op in OPERATIONS for op in self.operations), f"a list of {', '.join(OPERATIONS)}")
        for name in ("steps", "batch_size", "grad_accum", "schedule_steps", "save_every", "log_every"):
            _setting(self, name, _whole(getattr(self, name)) and getattr(self, name) >= 1, "a whole number >= 1")
        for name in ("warmup_steps", "val_every", "val_samples", "num_workers"):
            _setting(self, name, _whole(getattr(self, name)) and getattr(self, name) >= 0, "a whole number >= 0")
        _setting(self, "seed", _whole(self.seed), "a whole number")
        _setting(self, "fusion_layers", self.fusion_layers is None or (_whole(self.fusion_layers)
                                                                       and self.fusion_layers >= 1),
                 "empty or a whole number >= 1")
        for name, low, high in (("seconds", 0, 30), ("lr", 0, 1), ("grad_clip", 0, math.inf)):
            _setting(self, name, _real(getattr(self, name)) and low < getattr(self, name) <= high,
                     f"a number above {low}" + (f" and at most {high}" if high < math.inf else ""))
        _setting(self, "weight_decay", _real(self.weight_decay) and self.weight_decay >= 0, "a number >= 0")
        _setting(self, "text_dropout", _real(self.text_dropout) and 0 <= self.text_dropout <= 1,
                 "a number from 0 to 1")

    @classmethod
    def from_file(cls, path) -> "TrainConfig":
        try:
            text = plain_text.read_file(path, "training config", 1 << 20)
            parse = plain_text.parse_yaml if Path(path).suffix in (".yaml", ".yml") else plain_text.parse_json
            data = parse(text, str(path))
        except OSError as e:
            raise ValueError(f"cannot read the training config {path}: {e.strerror or e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds {'nothing' if data is None else 'a ' + type(data).__name__}; a training "
                             f"config is a mapping of settings (out_dir: ..., dataset_root: ...)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; known: {', '.join(sorted(known))}")
        missing = [n for n in ("out_dir", "dataset_root") if n not in data]
        if missing:
            raise ValueError(f"{path}: missing required settings {missing}")
        try:
            return cls(**data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def _setting(cfg: "TrainConfig", name: str, ok, accepted: str):
    if not ok:
        shown = repr(getattr(cfg, name))
        raise ValueError(f"setting {name} must be {accepted}, got {shown if len(shown) <= 60 else shown[:60] + '...'}")


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up from 0, then a cosine down to 0 at `total` (the official schedule)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """Freeze everything but the fusion module and LoRA; return what trains."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fusion.") or ".lora_" in name)
    return [p for p in model.parameters() if p.requires_grad]


def edit_loss(model, cond_codes, target_codes, text_cond, operations=None) -> tuple[torch.Tensor, dict]:
    """Cross-entropy over every valid delay-pattern position of all codebooks; also per operation."""
    logits, mask = model(target_codes, cond_codes, text_cond)
    per_item = []
    for i in range(logits.shape[0]):
        m = mask[i]
        per_item.append(F.cross_entropy(logits[i][m].float(), target_codes[i][m], reduction="sum") / m.sum())
    losses = torch.stack(per_item)
    by_op = {}
    if operations is not None:
        for op in set(operations):
            by_op[op] = float(losses.detach()[[o == op for o in operations]].mean())
    return losses.mean(), by_op


def token_accuracy(model, cond_codes, target_codes, text_cond) -> float:
    with torch.no_grad():
        logits, mask = model(target_codes, cond_codes, text_cond)
        return float((logits.argmax(-1)[mask] == target_codes[mask]).float().mean())


class Trainer:
    """The training loop: one optimizer step after another over the feed's micro-batches, with
    logs, step checkpoints, validation samples and (under torchrun) DDP."""

    def __init__(self, cfg: TrainConfig, editor: Editor | None = None, log: Callable[[str], None] = print):
        self.cfg, self.log = cfg, log
        self.rank, self.world = ranks.world()
        self.device = ranks.join(defaults.pick_device(cfg.device))
        songs = read_songs(cfg.dataset_layout, cfg.dataset_root)  # a bad dataset is said before any model loads
        self.out = check_writable_folder(cfg.out_dir)
        per_step = cfg.batch_size * cfg.grad_accum * self.world
        self.dataset = TripletDataset(songs, cfg.classes, cfg.seconds, cfg.operations, cfg.seed,
                                      length=cfg.steps * per_step + 1024, dialect=cfg.dialect)
        self.val = TripletDataset(songs, cfg.classes, cfg.seconds, cfg.operations, cfg.seed + 1_000_003,
                                  length=max(1, cfg.val_samples), dialect=cfg.dialect)
        self.editor = editor or Editor.from_pretrained(
            cfg.base, cfg.init_adapter, cfg.t5, cfg.encodec, device="cpu", dtype="fp32", merge_lora=False,
            new_adapter=None if cfg.init_adapter else NewAdapter(cfg.fusion_layers, cfg.dialect, tuple(cfg.classes),
                                                                 cfg.seed))
        self.model = self.editor.model.to(self.device).train()
        self.editor.text_encoder.to(self.device)
        self.editor.codec.model.to(self.device)
        self.params = trainable_parameters(self.model)
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else None
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.schedule_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.step = 0
        self.out.mkdir(parents=True, exist_ok=True)
        self.feed = TripletFeed(self.dataset, self.editor.codec, self.device, batch_size=cfg.batch_size,
                                grad_accum=cfg.grad_accum, steps=cfg.steps, num_workers=cfg.num_workers,
                                cache_dir=cfg.cache_dir, rank=self.rank, world=self.world)

    def precompute(self, progress: Callable[[int, int], None] | None = None) -> int:
        """The pre-encoding pass: every sample of the run (this rank's share) into the code cache."""
        return self.feed.precompute(self.step, progress)

    def encode_batch(self, batch: dict):
        """(condition codes, target codes, text condition) of a batch of codes or of audio."""
        if "cond" in batch:
            cond, target = batch["cond"], batch["target"]
        else:
            with torch.no_grad():
                cond = self.editor.codec.encode(batch["input"].to(self.device)).to(self.device)
                target = self.editor.codec.encode(batch["output"].to(self.device)).to(self.device)
        with torch.no_grad():
            hidden, mask = self.editor.text_encoder(batch["text"])
        text = self.model.text_condition(hidden.to(self.device), mask.to(self.device))
        if self.cfg.text_dropout > 0:
            rng = random.Random(f"dropout:{self.cfg.seed}:{self.step}:{self.rank}")
            keep = torch.tensor([rng.random() >= self.cfg.text_dropout for _ in batch["text"]], device=self.device)
            text = text * keep[:, None, None]
        return cond, target, text

    def train_step(self) -> dict:
        net = self.ddp or self.model
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.cfg.precision)
        totals, by_op = [], {}
        self.optimizer.zero_grad(set_to_none=True)
        for micro, indices in enumerate(self.feed.batches(self.step)):
            batch = self.feed.codes_for(indices, self.step)
            cond, target, text = self.encode_batch(batch)
            sync = self.ddp is None or micro == self.cfg.grad_accum - 1
            ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()
            with ctx, torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss, ops = edit_loss(net, cond, target, text, batch["operation"])
                self.scaler.scale(loss / self.cfg.grad_accum).backward()
            totals.append(float(loss.detach()))
            for op, v in ops.items():
                by_op.setdefault(op, []).append(v)
        self.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return {"step": self.step, "loss": sum(totals) / len(totals), "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": grad_norm, **{f"loss_{op}": sum(v) / len(v) for op, v in by_op.items()}}

    def fit(self, progress: Callable[[int, int], None] | None = None) -> dict:
        record = {}
        log_path = self.out / "log.jsonl"
        start = time.perf_counter()
        while self.step < self.cfg.steps:
            record = self.train_step()
            if self.rank == 0 and (self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps):
                record["seconds"] = round(time.perf_counter() - start, 2)
                append_line(log_path, json.dumps(record))
                self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if self.step % self.cfg.save_every == 0 or self.step == self.cfg.steps:
                self.save_checkpoint()
            if self.cfg.val_every and self.step % self.cfg.val_every == 0 and self.rank == 0:
                self.model.eval()
                try:
                    write_samples(self.editor, self.val, self.out / "samples" / f"step_{self.step:07d}")
                finally:
                    self.model.train()
            if progress is not None:
                progress(self.step, self.cfg.steps)
        if self.world > 1:
            record["ranks_agree"] = self.ranks_agree()
            if not record["ranks_agree"]:
                raise RuntimeError("the ranks' trainable parameters diverged; the adapter was not written")
            self.log(f"trainable parameters identical on all {self.world} ranks")
            if self.rank == 0:
                append_line(log_path, json.dumps({"step": self.step, "ranks_agree": True, "world_size": self.world}))
        if self.rank == 0:
            train_state.save_adapter(self.model, self.out / "adapter.safetensors", step=self.step, **self._meta())
        return record

    def close(self):
        ranks.leave()

    def ranks_agree(self) -> bool:
        """Every rank holds bit-identical trainable parameters (compared through their checksums)."""
        flat = torch.cat([p.detach().float().flatten() for p in self.params])
        sums = torch.stack([flat.sum(), (flat * torch.arange(1, flat.numel() + 1, device=flat.device)).sum()])
        gathered = [torch.zeros_like(sums) for _ in range(self.world)]
        dist.all_gather(gathered, sums)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    def _meta(self) -> dict:
        return {"base": self.cfg.base, "dialect": self.cfg.dialect, "stems": self.cfg.classes}

    def save_checkpoint(self):
        if self.rank == 0:
            train_state.save_step(self.out / f"step_{self.step:07d}", self.model, self.step, self.optimizer,
                                  self.scheduler, self.scaler, asdict(self.cfg), **self._meta())

    def resume(self, folder) -> int:
        """Continue from a `step_N` folder: adapter weights, optimizer, schedule, scaler, step."""
        self.step = train_state.resume(folder, self.model, self.optimizer, self.scheduler, self.scaler, self.device)
        self.feed.restart()
        return self.step


def step_of(folder) -> int | None:
    """The step a `step_N` checkpoint folder holds, from its name (None for another name)."""
    m = re.fullmatch(r"step_(\d+)", Path(folder).name)
    return int(m.group(1)) if m else None


def _log_steps(out) -> list[tuple[str, int | None]]:
    """Each line of the run log in `out` with the step it records (None where none can be read)."""
    log = Path(out) / "log.jsonl"
    rows = []
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        try:
            rows.append((line, int(json.loads(line).get("step", 0))))
        except (ValueError, TypeError, AttributeError):
            rows.append((line, None))
    return rows


def last_step_in(out) -> int:
    """The last step an earlier run recorded in the run folder `out` (its log's rows and its
    `step_N` folders); 0 when there is none."""
    out = Path(out)
    steps = [step_of(p) or 0 for p in out.glob("step_*") if p.is_dir()] if out.is_dir() else []
    return max(steps + [step for _, step in _log_steps(out) if step is not None], default=0)


def check_run_folder(out, resume=None, overwrite: bool = False) -> int:
    """Refuse, before anything loads, a run that would write over steps an earlier run recorded
    in `out`: a new run into a folder that holds one, or a resume from a step earlier than the
    folder's last, unless `overwrite`. Returns that last step (0: none)."""
    done, start = last_step_in(out), (step_of(resume) or 0) if resume else 0
    if done > start and not overwrite:
        latest = Path(out) / f"step_{done:07d}"
        how = f"resume from the latest (--resume {latest})" if latest.is_dir() else "resume from its latest step"
        raise about(FileExistsError(
            f"{out} holds a run up to step {done}, past the step {start} this run starts from: {how}, choose "
            f"another out_dir, or replace them"), "overwrite")
    return done


def drop_log_after(out, step: int):
    """The run log without the rows past `step` (the steps a resume with overwrite replaces)."""
    rows = _log_steps(out)
    if rows:
        with replacing(Path(out) / "log.jsonl") as f:
            f.write("".join(line + "\n" for line, s in rows if s is None or s <= step).encode())


def write_samples(editor: Editor, triplets: TripletDataset, folder: Path):
    """Edit the triplets' inputs and write input, edit and target of each as audio in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(triplets)):
        t = triplets.triplet(i)
        codes = editor.codec.encode(t.input[None, None].to(editor.model.device))
        wav = editor.decode(editor.edit_codes(codes, t.text, Sampling(seed=i)), t.input.shape[-1])[0]
        tag = f"{i:02d}_{t.operation}_{t.target.replace(' ', '_')}"
        write_audio(folder / f"{tag}_input.wav", t.input[None], SAMPLE_RATE, overwrite=True)
        write_audio(folder / f"{tag}_edited.wav", wav, editor.sample_rate, overwrite=True)
        write_audio(folder / f"{tag}_target.wav", t.output[None], SAMPLE_RATE, overwrite=True)
