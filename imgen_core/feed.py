"""The training samples' codes, in the run's order: which samples each step takes on this rank,
their audio read ahead by worker processes, encoded by EnCodec, and kept in an optional cache.

Sample i of a run is triplet i of the dataset, so the order is a function of (seed, step) and a
resumed run continues with exactly the samples it would have seen.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .checkpoints import CheckpointError
from .codec import Codec
from .data import TripletDataset
from .files import replacing
from .safe_pickle import safe_load


def collate(items: list[dict]) -> dict:
    return {"input": torch.stack([x["input"] for x in items])[:, None],
            "output": torch.stack([x["output"] for x in items])[:, None],
            "text": [x["text"] for x in items], "operation": [x["operation"] for x in items],
            "index": [x["index"] for x in items]}


class TripletFeed:
    """Codes of the samples each step takes, for one rank of `world`."""

    def __init__(self, dataset: TripletDataset, codec: Codec, device: torch.device, *, batch_size: int,
                 grad_accum: int, steps: int, num_workers: int = 0, cache_dir=None, rank: int = 0, world: int = 1):
        self.dataset, self.codec, self.device = dataset, codec, device
        self.batch_size, self.grad_accum, self.steps = batch_size, grad_accum, steps
        self.num_workers, self.rank, self.world = num_workers, rank, world
        self.cache = CodeCache(cache_dir) if cache_dir else None
        self._stream = None

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world

    def batches(self, step: int):
        """The micro-batches of `step` for this rank: a fixed slice of the global sample order."""
        first = step * self.samples_per_step
        for micro in range(self.grad_accum):
            start = first + (micro * self.world + self.rank) * self.batch_size
            yield list(range(start, start + self.batch_size))

    def restart(self):
        """Forget what was read ahead (after a resume: the next read starts from its step)."""
        self._stream = None

    def load_batch(self, indices: list[int], step: int) -> dict:
        """Audio of these samples, taken at `step`. With workers, batches come from one loader that
        reads ahead along this rank's sample order from that step on; anything off that order is
        read directly."""
        if self.num_workers > 0:
            if self._stream is None:
                order = [i for s in range(step, self.steps) for b in self.batches(s) for i in b]
                loader = torch.utils.data.DataLoader(
                    torch.utils.data.Subset(self.dataset, order), batch_size=self.batch_size,
                    num_workers=self.num_workers, collate_fn=collate, prefetch_factor=2)
                self._stream = iter(loader)
            batch = next(self._stream, None)
            if batch is not None and batch["index"] == indices:
                return batch
            self._stream = None  # out of step (a cache hit, a resume): read directly
        return collate([self.dataset[i] for i in indices])

    def codes_for(self, indices: list[int], step: int) -> dict:
        """Condition and target codes of these samples: from the code cache when it has them,
        else loaded, encoded and (with a cache) stored."""
        cached = {i: self.cache.get(i) for i in indices} if self.cache else {}
        todo = [i for i in indices if cached.get(i) is None]
        if todo:
            batch = self.load_batch(todo, step)
            with torch.no_grad():
                cond = self.codec.encode(batch["input"].to(self.device))
                target = self.codec.encode(batch["output"].to(self.device))
            for j, i in enumerate(todo):
                cached[i] = {"cond": cond[j], "target": target[j], "text": batch["text"][j],
                             "operation": batch["operation"][j]}
                if self.cache:
                    self.cache.put(i, cached[i])
        items = [cached[i] for i in indices]
        return {"cond": torch.stack([x["cond"] for x in items]).long().to(self.device),
                "target": torch.stack([x["target"] for x in items]).long().to(self.device),
                "text": [x["text"] for x in items], "operation": [x["operation"] for x in items]}

    def precompute(self, first_step: int, progress: Callable[[int, int], None] | None = None) -> int:
        """The pre-encoding pass: every sample of this rank from `first_step` on into the cache."""
        if self.cache is None:
            raise ValueError("set cache_dir in the config to pre-encode the dataset")
        steps = range(first_step, self.steps)
        for n, step in enumerate(steps, start=1):
            for indices in self.batches(step):
                self.codes_for(indices, step)
            if progress is not None:
                progress(n, len(steps))
        return len(steps) * self.batch_size * self.grad_accum


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
