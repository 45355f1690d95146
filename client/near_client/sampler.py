"""The training sampler whose content NEAR selection switches while the DataLoader runs.

:class:`SelectionSampler` is a map-style sampler over the whole training pool. It yields a stream of
indices in which *position* ``p`` (counted over the whole run: ``epoch * len(pool) + i``) maps to an
index by a pure function of ``p``, the seed and a table of *phases*:

- phase ``-1`` (warmup) covers the whole pool: shuffled passes over every index;
- each NEAR update appends a phase ``(start, round, selected)``: from position ``start`` on, the
  stream is shuffled passes over ``selected``, each sample exactly once per pass.

``start`` is the *draw frontier* when the update happens: the first position no one has drawn yet.
Because the sampler is iterated lazily in the training process (also with
``dataloader_num_workers > 0``: workers receive index batches, they never hold the sampler), an
update reaches every position not yet drawn. What was drawn before it is the **staleness bound**:
with a ``transformers.Trainer`` at most ``1 + num_workers * prefetch_factor`` batches per process
(accelerate's ``DataLoaderShard`` looks one batch ahead; each worker holds ``prefetch_factor``
index batches), and fewer at the end of an epoch. Every batch after those comes from the new
selection. Since the phase table is saved with checkpoints and positions are absolute, a resumed
run replays the same stream.

The sampler needs torch (``pip install 'near-select[train]'``); :mod:`near_client` imports it lazily.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    from torch.utils.data import Sampler
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("near_client's training sampler needs torch: pip install 'near-select[train]'") from exc

__all__ = ["Phase", "SelectionSampler"]

WARMUP_ROUND = -1


@dataclass
class Phase:
    """From stream position ``start`` on, shuffled passes over ``indices`` (None: the whole pool)."""

    start: int
    round: int
    indices: np.ndarray | None
    step: int = 0
    _perms: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "round": self.round,
            "step": self.step,
            "indices": None if self.indices is None else self.indices.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Phase:
        idx = data.get("indices")
        return cls(
            start=int(data["start"]),
            round=int(data["round"]),
            step=int(data.get("step", 0)),
            indices=None if idx is None else np.asarray(idx, dtype=np.int64),
        )


class SelectionSampler(Sampler[int]):
    """Yields training indices: the whole pool during warmup, then the latest NEAR selection.

    ``len(sampler)`` is the pool size, so the Trainer's epochs and ``max_steps`` keep their meaning
    (an epoch is ``len(pool)`` draws). Every process of a distributed run holds an identical sampler
    (same seed, same phases) and accelerate shards its batches across processes as usual.

    >>> s = SelectionSampler(10, seed=0)
    >>> sorted(s)                      # warmup: a shuffled pass over the pool
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    >>> s.set_epoch(1); _ = s.switch([7, 8, 9], round=0)
    >>> sorted(list(s)[:3])            # the next three draws: one pass over the selection
    [7, 8, 9]
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        if size < 1:
            raise ValueError("the training dataset is empty")
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0
        self.phases: list[Phase] = [Phase(start=0, round=WARMUP_ROUND, indices=None)]
        self._frontier = 0  # first position not yet drawn
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate) before each epoch; positions are absolute."""
        self.epoch = int(epoch)

    @property
    def frontier(self) -> int:
        """The first stream position not drawn yet."""
        return self._frontier

    @property
    def current(self) -> Phase:
        return self.phases[-1]

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.size
        for i in range(self.size):
            yield self.draw(base + i)

    def draw(self, position: int) -> int:
        """The index at stream ``position`` (and advance the frontier past it)."""
        with self._lock:
            if position >= self._frontier:
                self._frontier = position + 1
            k = bisect.bisect_right(self._starts, position) - 1
            phase = self.phases[max(k, 0)]
        return self._index(phase, position - phase.start)

    @property
    def _starts(self) -> list[int]:
        return [p.start for p in self.phases]

    def _index(self, phase: Phase, offset: int) -> int:
        n = self.size if phase.indices is None else len(phase.indices)
        epoch_of_phase, k = divmod(offset, n)
        perm = phase._perms.get(epoch_of_phase)
        if perm is None:
            # One generator per (seed, round, pass): any position is computable without the past.
            rng = np.random.default_rng([self.seed, phase.round + 1, epoch_of_phase])
            perm = rng.permutation(n)
            phase._perms.clear()  # keep the current pass only; older ones are rarely drawn again
            phase._perms[epoch_of_phase] = perm
        j = int(perm[k])
        return j if phase.indices is None else int(phase.indices[j])

    def switch(self, indices: Sequence[int], round: int, *, start: int | None = None, step: int = 0) -> int:
        """Train on ``indices`` from the frontier on (or from ``start``, e.g. the frontier agreed by all
        processes, never before the frontier). Returns the start position."""
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.size == 0:
            raise ValueError("an empty selection")
        if idx.min() < 0 or idx.max() >= self.size:
            raise ValueError(f"selected indices must lie in [0, {self.size}), got {idx.min()}..{idx.max()}")
        with self._lock:
            begin = self._frontier if start is None else max(int(start), self._frontier)
            self.phases.append(Phase(start=begin, round=int(round), indices=idx, step=int(step)))
        return begin

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "seed": self.seed, "phases": [p.to_json() for p in self.phases[1:]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"saved sampler state is for a pool of {state['size']}, this one has {self.size}")
        with self._lock:
            self.seed = int(state["seed"])
            self.phases = [Phase(start=0, round=WARMUP_ROUND, indices=None)]
            self.phases += [Phase.from_json(p) for p in state["phases"]]
