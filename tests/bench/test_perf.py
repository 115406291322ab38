"""The pipeline benchmark's memory sampler: a peak per phase, and what the memory was made of at that peak."""

from __future__ import annotations

import time

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
