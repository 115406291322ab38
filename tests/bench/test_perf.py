"""The pipeline benchmark's memory sampler: a peak per phase, and what the memory was made of at that peak."""

from __future__ import annotations

import sys
import time

import pytest

from bench.perf import RssSampler, heap_mb


def test_each_phase_gets_its_own_peak_and_the_heap_seen_at_it() -> None:
    sampler = RssSampler(first="small")
    time.sleep(0.05)
    sampler.phase("large")
    held = bytearray(64 * 2**20)  # touched pages: 64 MB of native memory in use
    for i in range(0, len(held), 4096):
        held[i] = 1
    time.sleep(0.1)
    peaks = sampler.stop()
    del held

    assert set(peaks) == set(sampler.heap_at_peak) == {"small", "large"}
    assert peaks["large"] >= peaks["small"] + 60
    large, small = sampler.heap_at_peak["large"], sampler.heap_at_peak["small"]
    assert large["malloc_in_use_mb"] >= small["malloc_in_use_mb"] + 60
    assert set(heap_mb()) >= {"python_blocks", "malloc_in_use_mb", "malloc_free_held_mb"}


def test_the_heap_is_read_while_pyarrow_is_still_being_imported(monkeypatch) -> None:
    import types

    monkeypatch.setitem(sys.modules, "pyarrow", types.ModuleType("pyarrow"))  # in sys.modules, not yet filled
    heap = heap_mb()
    assert "arrow_pool_mb" not in heap and heap["python_blocks"] > 0


def test_a_sampler_whose_thread_died_says_so_instead_of_reporting_peaks(monkeypatch) -> None:
    sampler = RssSampler(first="only")

    def broken() -> dict[str, float]:
        raise ValueError("no heap")

    monkeypatch.setattr("bench.perf.heap_mb", broken)
    monkeypatch.setattr("bench.perf.rss_mb", lambda: 10.0**9)  # every sample is a new peak, so heap_mb is called
    deadline = time.monotonic() + 5
    while sampler._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="sampler stopped early.*no heap"):
        sampler.stop()
