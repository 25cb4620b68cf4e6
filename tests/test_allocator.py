"""Retaining freed memory: a freed block's pages are reused, not faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys, torch
from recsys.allocator import retain_freed_memory
from recsys.layers import MLP
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
torch.manual_seed(0)
torch.set_num_threads(1)
mlp = MLP(100, [400, 400, 400], batch_norm=True, dropout=0.2, output_dim=1).train()
x = torch.randn(4096, 100)
def step():  # a training step's pattern: activations of 6.5 MB allocated, kept for backward, freed
    mlp.zero_grad(set_to_none=True)
    mlp(x).sum().backward()
for _ in range(5):  # the heap grows to the step's peak
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_retained_memory_is_reused_without_page_faults() -> None:
    faults = {}
    for mode in ("retain", "default"):
        out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True).stdout.split()
        assert out[0] == str(mode == "retain")
        faults[mode] = int(out[1])
    # A step allocates and frees dozens of 6.5 MB activations (1,600 pages each): glibc's default gives many
    # back to the system on free and faults them in again next step; retained, the warm-up's pages are reused.
    # Over 30 steps: without it, 2,000-3,700 a step were seen; retained, a few thousand in all (when the heap
    # grows to a new peak), not a few thousand a step.
    assert faults["default"] > 30 * 1_000, faults
    assert faults["retain"] * 5 < faults["default"], faults
