"""SelectionSampler on its own and under a plain torch DataLoader (0 and 2 workers)."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

from near_client import SelectionSampler


def test_positions_are_absolute_and_deterministic() -> None:
    a, b = SelectionSampler(20, seed=3), SelectionSampler(20, seed=3)
    a.switch(range(5, 15), round=0, start=25)
    b.switch(range(5, 15), round=0, start=25)
    b.set_epoch(1)
    stream_a = list(a) + (a.set_epoch(1) or list(a))  # type: ignore[func-returns-value]
    assert stream_a[20:] == list(b)  # epoch 1 alone gives the same positions 20..39
    assert sorted(stream_a[:20]) == list(range(20))  # warmup: one pass over the pool
    assert sorted(stream_a[25:35]) == list(range(5, 15))  # then one pass over the selection
    assert stream_a[:20] != list(SelectionSampler(20, seed=4))  # the seed matters


def test_switch_starts_at_the_frontier() -> None:
    s = SelectionSampler(10)
    it = iter(s)
    drawn = [next(it) for _ in range(4)]
    assert s.frontier == 4
    assert s.switch([7, 8], round=0) == 4
    assert s.switch([1, 2], round=1, start=2) == 4  # never before what was drawn
    rest = list(it)
    assert set(rest) == {1, 2} and len(drawn) + len(rest) == 10


def test_state_round_trip_and_bad_input() -> None:
    s = SelectionSampler(12, seed=1)
    s.set_epoch(1)
    s.switch([3, 4, 5], round=0, start=14, step=7)
    t = SelectionSampler(12)
    t.load_state_dict(s.state_dict())
    t.set_epoch(1)
    assert list(t) == list(s)
    with pytest.raises(ValueError, match=r"lie in \[0, 12\)"):
        s.switch([12], round=1)
    with pytest.raises(ValueError, match="pool of 12"):
        SelectionSampler(11).load_state_dict(s.state_dict())


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_staleness_is_the_prefetch_depth(workers: int) -> None:
    """Workers get index batches from the main process: a switch reaches all but the prefetched ones."""
    sampler = SelectionSampler(64, seed=0)
    loader = DataLoader(
        list(range(64)), batch_size=4, sampler=sampler, num_workers=workers, prefetch_factor=2 if workers else None
    )
    it = iter(loader)
    before = [next(it).tolist() for _ in range(3)]
    sampler.switch(range(40, 48), round=0)
    after = [b.tolist() for b in it]
    depth = workers * 2  # a bare DataLoader: num_workers x prefetch_factor (accelerate adds 1)
    assert all(set(b) <= set(range(64)) for b in before)
    assert all(set(b) <= set(range(40, 48)) for b in after[depth:])
    assert sampler.current.start == (3 + depth) * 4  # exactly `depth` batches were drawn ahead
