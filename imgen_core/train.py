"""Instruction tuning: only the fusion parameters and LoRA learn; the base MusicGen, T5 and EnCodec
stay frozen. One process or many (torchrun: DDP over gloo on CPU, NCCL on GPU).

    imgen train --config train.yaml
    torchrun --nproc_per_node 4 -m imgen_core.cli train --config train.yaml

The data order is a function of (seed, step): sample i of the run is triplet i of the dataset, so
resuming from a checkpoint continues with exactly the samples the run would have seen.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .adapter_file import adapter_metadata, write_safetensors
from . import ranks
from .config import FusionConfig, LMConfig
from .files import append_line, replacing
from .data import TripletDataset, read_songs
from .instructions import OPERATIONS, default_stems


@dataclass
class TrainConfig:
    out_dir: str
    dataset_root: str
    dataset_layout: str = "slakh"          # slakh, moisesdb or folders
    classes: list[str] = field(default_factory=lambda: list(default_stems("slakh")))
    dialect: str = "slakh"
    operations: list[str] = field(default_factory=lambda: list(OPERATIONS))
    seconds: float = 5.0
    base: str = "facebook/musicgen-large"  # state_dict.bin, its folder or a HF repo
    t5: str = "t5-base"
    encodec: str = "facebook/encodec_32khz"
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

    @classmethod
    def from_file(cls, path) -> "TrainConfig":
        import yaml
        text = Path(path).read_text()
        data = yaml.safe_load(text) if Path(path).suffix in (".yaml", ".yml") else json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; known: {', '.join(sorted(known))}")
        missing = [n for n in ("out_dir", "dataset_root") if n not in data]
        if missing:
            raise ValueError(f"{path}: missing required settings {missing}")
        return cls(**data)


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


def collate(items: list[dict]) -> dict:
    return {"input": torch.stack([x["input"] for x in items])[:, None],
            "output": torch.stack([x["output"] for x in items])[:, None],
            "text": [x["text"] for x in items], "operation": [x["operation"] for x in items],
            "index": [x["index"] for x in items]}


class Trainer:
    def __init__(self, cfg: TrainConfig, editor=None, log: Callable[[str], None] = print):
        from .loader import load_editor, pick_device
        self.cfg, self.log = cfg, log
        self.rank, self.world = ranks.world()
        self.device = ranks.join(pick_device(cfg.device))
        torch.manual_seed(cfg.seed)  # LoRA's initial A matrices come from the global generator
        if editor is None:
            editor = load_editor(cfg.base, cfg.init_adapter, cfg.t5, cfg.encodec, device="cpu", dtype="fp32",
                                 merge_lora=False, new_adapter=None if cfg.init_adapter else self._new_adapter)
            if not cfg.init_adapter:
                with torch.no_grad():  # the official init: randn position embeddings, gates at zero
                    editor.model.fusion.pos_emb.normal_(generator=torch.Generator().manual_seed(cfg.seed))
                editor.dialect, editor.stems = cfg.dialect, tuple(cfg.classes)
        self.editor = editor
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
        self._stream = None
        songs = read_songs(cfg.dataset_layout, cfg.dataset_root)
        self.dataset = TripletDataset(songs, cfg.classes, cfg.seconds, cfg.operations, cfg.seed,
                                      length=cfg.steps * self.samples_per_step + 1024, dialect=cfg.dialect)
        self.val = TripletDataset(songs, cfg.classes, cfg.seconds, cfg.operations, cfg.seed + 1_000_003,
                                  length=max(1, cfg.val_samples), dialect=cfg.dialect)
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)

    def _new_adapter(self, lm_cfg: LMConfig) -> FusionConfig:
        return FusionConfig(num_layers=self.cfg.fusion_layers or lm_cfg.num_layers)

    @property
    def samples_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * self.world

    def batches(self, step: int):
        """The micro-batches of `step` for this rank: a fixed slice of the global sample order."""
        first = step * self.samples_per_step
        for micro in range(self.cfg.grad_accum):
            start = first + (micro * self.world + self.rank) * self.cfg.batch_size
            yield list(range(start, start + self.cfg.batch_size))

    def load_batch(self, indices: list[int]) -> dict:
        """Audio of these samples. With workers, batches come from one loader that reads ahead
        along this rank's sample order; anything off that order is read directly."""
        if self.cfg.num_workers > 0:
            if self._stream is None:
                order = [i for step in range(self.step, self.cfg.steps) for b in self.batches(step) for i in b]
                loader = torch.utils.data.DataLoader(
                    torch.utils.data.Subset(self.dataset, order), batch_size=self.cfg.batch_size,
                    num_workers=self.cfg.num_workers, collate_fn=collate, prefetch_factor=2)
                self._stream = iter(loader)
            batch = next(self._stream, None)
            if batch is not None and batch["index"] == indices:
                return batch
            self._stream = None  # out of step (a cache hit, a resume): read directly
        return collate([self.dataset[i] for i in indices])

    def codes_for(self, indices: list[int]) -> dict:
        """Condition and target codes of these samples: from the code cache when it has them,
        else loaded, encoded and (with a cache) stored."""
        cache = CodeCache(self.cfg.cache_dir) if self.cfg.cache_dir else None
        cached = {i: cache.get(i) for i in indices} if cache else {}
        todo = [i for i in indices if cached.get(i) is None]
        if todo:
            batch = self.load_batch(todo)
            with torch.no_grad():
                cond = self.editor.codec.encode(batch["input"].to(self.device))
                target = self.editor.codec.encode(batch["output"].to(self.device))
            for j, i in enumerate(todo):
                cached[i] = {"cond": cond[j], "target": target[j], "text": batch["text"][j],
                             "operation": batch["operation"][j]}
                if cache:
                    cache.put(i, cached[i])
        items = [cached[i] for i in indices]
        return {"cond": torch.stack([x["cond"] for x in items]).long().to(self.device),
                "target": torch.stack([x["target"] for x in items]).long().to(self.device),
                "text": [x["text"] for x in items], "operation": [x["operation"] for x in items]}

    def precompute(self, progress: Callable[[int, int], None] | None = None) -> int:
        """The pre-encoding pass: every sample of the run (this rank's share) into the code cache."""
        if not self.cfg.cache_dir:
            raise ValueError("set cache_dir in the config to pre-encode the dataset")
        steps = range(self.step, self.cfg.steps)
        for n, step in enumerate(steps, start=1):
            for indices in self.batches(step):
                self.codes_for(indices)
            if progress is not None:
                progress(n, len(steps))
        return len(steps) * self.cfg.batch_size * self.cfg.grad_accum

    def encode_batch(self, batch: dict):
        if "cond" in batch:
            cond, target, texts = batch["cond"], batch["target"], batch["text"]
        else:
            with torch.no_grad():
                cond = self.editor.codec.encode(batch["input"].to(self.device)).to(self.device)
                target = self.editor.codec.encode(batch["output"].to(self.device)).to(self.device)
            texts = batch["text"]
        with torch.no_grad():
            hidden, mask = self.editor.text_encoder(texts)
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
        for micro, indices in enumerate(self.batches(self.step)):
            batch = self.codes_for(indices)
            cond, target, text = self.encode_batch(batch)
            sync = self.ddp is None or micro == self.cfg.grad_accum - 1
            ctx = self.ddp.no_sync() if not sync else _null()
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
                self.write_samples()
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
            self.save_adapter(self.out / "adapter.safetensors")
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

    # ------------------------------------------------------------ checkpoints

    def save_adapter(self, path: Path):
        m = self.model
        meta = adapter_metadata(m.fusion_cfg, m.lm_cfg.num_layers, m.lm_cfg.dim, self.cfg.base, self.cfg.dialect,
                                self.cfg.classes, source=f"imgen train, step {self.step}")
        tensors = {k: v.detach().float().cpu() for k, v in m.adapter_state_dict().items()}
        write_safetensors(tensors, path, meta)

    def save_checkpoint(self):
        if self.rank != 0:
            return
        folder = self.out / f"step_{self.step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        self.save_adapter(folder / "adapter.safetensors")
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "config": json.dumps(asdict(self.cfg))}
        with replacing(folder / "trainer_state.pt") as f:
            torch.save(state, f)

    def resume(self, folder) -> int:
        """Continue from a `step_N` folder: adapter weights, optimizer, schedule, scaler, step."""
        from .adapter_file import read_adapter
        from .safe_pickle import safe_load
        folder = Path(folder)
        _, tensors, _ = read_adapter(folder / "adapter.safetensors")
        missing, unexpected = self.model.load_state_dict({k: v.to(self.device) for k, v in tensors.items()},
                                                         strict=False)
        if unexpected:
            raise ValueError(f"{folder}: adapter keys this model lacks: {unexpected[:8]}")
        state = safe_load(folder / "trainer_state.pt", what="trainer state", mmap=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self._stream = None
        return self.step

    def write_samples(self):
        """Edit the validation triplets' inputs and write input, edit and target as audio."""
        from .audio import write_audio
        folder = self.out / "samples" / f"step_{self.step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        self.model.eval()
        try:
            for i in range(len(self.val)):
                t = self.val.triplet(i)
                codes = self.editor.codec.encode(t.input[None, None].to(self.device))
                edited = self.editor.edit(codes, t.text, seed=i)
                wav = self.editor.decode(edited, t.input.shape[-1])[0]
                tag = f"{i:02d}_{t.operation}_{t.target.replace(' ', '_')}"
                write_audio(folder / f"{tag}_input.wav", t.input[None], 32000, overwrite=True)
                write_audio(folder / f"{tag}_edited.wav", wav, 32000, overwrite=True)
                write_audio(folder / f"{tag}_target.wav", t.output[None], 32000, overwrite=True)
        finally:
            self.model.train()


class CodeCache:
    """EnCodec codes of training samples on disk, one small file per sample index."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def path(self, index: int) -> Path:
        return self.folder / f"{index // 1000:05d}" / f"{index:09d}.pt"

    def get(self, index: int) -> dict | None:
        path = self.path(index)
        if not path.is_file():
            return None
        from .checkpoints import CheckpointError
        from .safe_pickle import safe_load
        try:
            return safe_load(path, what="cached tokens", mmap=False)
        except (CheckpointError, OSError):  # a torn or corrupt entry is simply recomputed
            return None

    def put(self, index: int, item: dict):
        path = self.path(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as f:
            torch.save({"cond": item["cond"].to(torch.int16).cpu(), "target": item["target"].to(torch.int16).cpu(),
                        "text": item["text"], "operation": item["operation"]}, f)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
