"""keep_freed_memory: freed activation memory is reused instead of faulted in again (glibc only)."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from hookscope import memory

glibc_only = pytest.mark.skipif(memory._glibc() is None, reason="malloc tuning applies to Linux glibc only")


def _faults_of(fn) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _allocate_like_a_cache() -> None:
    # 48 activation-sized tensors (~3 MiB each, ~150 MiB) alive at once, then all freed
    kept = [torch.ones(768 * 1024) for _ in range(48)]
    del kept


@glibc_only
def test_freed_cache_memory_is_reused_without_page_faults():
    assert memory.keep_freed_memory()
    for _ in range(3):  # the first rounds fault pages in (and settle malloc's free lists)
        _allocate_like_a_cache()
    pages = 48 * 768 * 1024 * 4 // resource.getpagesize()
    later_round = _faults_of(_allocate_like_a_cache)
    assert later_round < pages // 10, f"{later_round} page faults for {pages} pages of reused memory"
    assert memory.release_freed_memory() in (True, False)  # returns whether anything was released


def test_opt_out_and_bad_bound(monkeypatch):
    monkeypatch.setenv("HOOKSCOPE_KEEP_FREED_MEMORY", "0")
    assert memory.keep_freed_memory() is False
    monkeypatch.delenv("HOOKSCOPE_KEEP_FREED_MEMORY")
    with pytest.raises(ValueError, match="max_bytes"):
        memory.keep_freed_memory(-1)


def test_non_linux_is_left_alone(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory._glibc() is None
