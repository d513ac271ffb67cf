"""The allocator setting timings run under: freed memory is kept for the next call."""

from __future__ import annotations

import resource

import pytest
import torch

from relcomp.evaluation import keep_freed_memory
from relcomp.evaluation.speed import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="mallopt is glibc's")

#: above glibc's largest mmap threshold (32 MB), as a 512-token batch's attention is
BLOCK = 64 * 2**20


def _faults_of_second_allocation() -> int:
    """Minor page faults of allocating and filling BLOCK bytes, after doing it once."""
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.empty(BLOCK // 4, dtype=torch.float32)
        block.fill_(1.0)
        del block
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return faults


def test_freed_memory_is_reused_without_page_faults_inside_and_returned_outside():
    pages = BLOCK // resource.getpagesize()
    if _faults_of_second_allocation() < pages // 2:  # glibc mmaps and unmaps it each time…
        pytest.skip("…but this kernel backs it with huge pages: a few faults either way")
    with keep_freed_memory() as kept:
        assert kept
        assert _faults_of_second_allocation() < pages // 20
    assert _faults_of_second_allocation() > pages // 2  # the defaults are back
