"""The one streaming pass (``kinmerge.scan.stream``): what every consumer may rely on."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kinmerge.errors import CorruptFileError
from kinmerge.scan import Consumer, ExactStats, plan, scan, stream
from kinmerge.scan.sketches import Sketches, layer_group, sketch_models
from kinmerge.sources import open_models
from st_family import make_family


class Recorder(Consumer):
    """Notes which positions each thread consumed and the order in which chunks were reduced."""

    def __init__(self, fixed: bool = False) -> None:
        self.fixed_schedule = fixed
        self.lock = threading.Lock()
        self.by_worker: dict[int, list[int]] = {}
        self.reduced: list[tuple[str, int, int]] = []
        self.threads: set[str] = set()
        self.finished = False

    def consume(self, worker, piece, raws, dtypes):
        with self.lock:
            self.by_worker.setdefault(worker, []).append(piece.start)
            self.threads.add(threading.current_thread().name)
        assert len(raws) == len(dtypes) and all(r.shape[0] == piece.stop - piece.start for r in raws)
        return (piece.tensor.name, piece.start, piece.stop)

    def reduce(self, piece, result):
        assert result == (piece.tensor.name, piece.start, piece.stop)  # its own chunk's result, back
        self.reduced.append(result)

    def finish(self):
        self.finished = True


@pytest.mark.parametrize("fixed", [False, True])
def test_every_chunk_reduced_once_in_file_order(tmp_path, fixed):
    base, kids = make_family(tmp_path, 2)
    rec = Recorder(fixed)
    with open_models([base, *kids]) as (b, *ms):
        plans = plan(b, ms)[0]
        nbytes = stream(b, ms, plans, [rec], chunk=50, threads=3)
    want = [(p.name, lo, min(p.numel, lo + 50)) for p in plans for lo in range(0, p.numel, 50)]
    assert rec.reduced == want and rec.finished
    assert nbytes == 3 * sum(p.numel for p in plans) * 2  # three BF16 files, each read once
    assert rec.threads <= {f"kinmerge-scan-{w}" for w in range(3)}
    if fixed:  # round-robin: worker w takes chunks w, w + 3, ... (so per-worker sums are repeatable)
        starts = [lo for _, lo, _ in want]
        for w, got in rec.by_worker.items():
            assert sorted(got) == sorted(starts[w::3])


def test_a_failing_chunk_raises_on_the_caller_after_the_chunks_before_it(tmp_path):
    base, kids = make_family(tmp_path, 1)

    class Fails(Recorder):
        def consume(self, worker, piece, raws, dtypes):
            if (piece.tensor.name, piece.start) == failing:
                raise CorruptFileError("boom")
            return super().consume(worker, piece, raws, dtypes)

    rec = Fails()
    with open_models([base, *kids]) as (b, *ms):
        plans = plan(b, ms)[0]
        failing = (plans[1].name, 0)
        with pytest.raises(CorruptFileError, match="boom"):
            stream(b, ms, plans, [rec], chunk=64, threads=2)
    before = [(plans[0].name, lo, min(plans[0].numel, lo + 64)) for lo in range(0, plans[0].numel, 64)]
    assert rec.reduced == before and not rec.finished


def test_one_read_fills_exact_statistics_and_sketches(tmp_path):
    """Sketches and the exact matrix from one pass: the exact part is ``scan``'s, bit for bit."""
    base, kids = make_family(tmp_path, 3)
    with open_models([base, *kids]) as (b, *ms):
        alone = scan(b, ms, chunk=333, threads=2)
        before = [s.stats.bytes_read for s in (b, *ms)]
        both = sketch_models(b, ms, size=256, chunk=333, threads=2, groups=layer_group)
        read = [s.stats.bytes_read - x for s, x in zip((b, *ms), before, strict=True)]
    assert read == [sum(t.nbytes for t in s.tensors.values()) for s in (b, *ms)]  # every file once
    exact = both.exact()
    assert exact.models == alone.models and exact.base == alone.base and exact.bytes_read == alone.bytes_read
    assert np.array_equal(exact.stats.gram, alone.stats.gram) and np.array_equal(exact.stats.sums, alone.stats.sums)
    assert list(exact.per_tensor) == list(alone.per_tensor)
    for name, st in alone.per_tensor.items():
        assert np.array_equal(exact.per_tensor[name].gram, st.gram), name
    assert exact.pair(0, 2) == alone.pair(0, 2)


def test_consumers_share_a_pass_without_changing_each_other(tmp_path):
    """A sketch consumer beside the exact one changes no bit of either (sketch rows: per worker)."""
    base, kids = make_family(tmp_path, 2)
    with open_models([base, *kids]) as (b, *ms):
        plans = plan(b, ms)[0]
        exact, sk = ExactStats(), Sketches(2, 256, 5)
        stream(b, ms, plans, [exact, sk], chunk=100, threads=2)
        ref = sketch_models(b, ms, size=256, seed=5, chunk=100, threads=2)
    whole, _ = sk.result(exact)
    assert all(np.array_equal(x.values, y.values) for x, y in zip(whole, ref.sketches, strict=True))
    assert np.array_equal(exact.total.gram, ref.stats.gram)
