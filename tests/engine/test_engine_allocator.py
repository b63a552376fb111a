"""train.cpu_allocator: 'keep' makes repeated large CPU tensors stop page-faulting."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import resource, sys, torch
from segssl.config import TrainConfig
from segssl.engine.runtime import resolve_runtime

resolve_runtime(TrainConfig(cpu_allocator=sys.argv[1]), cuda_available=False)

def step():  # the shape of a training step: large activations made and freed again
    a = torch.empty(16 * 2**20); a.fill_(1.0)
    b = torch.empty(16 * 2**20); b.fill_(2.0)
    c = a + b
    del a, b, c

faults = []
for _ in range(14):  # glibc settles its heap within the first few steps
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults[-3:]))
"""


def _steady_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_keep_reuses_freed_memory_default_does_not():
    # 3 x 64 MB per step: by default glibc maps each afresh (~49k minor faults a step)
    assert _steady_faults("default") > 10_000
    assert _steady_faults("keep") < 500


def test_allocator_setting_is_validated():
    import pytest
    from pydantic import ValidationError

    from segssl.config import TrainConfig

    with pytest.raises(ValidationError, match="cpu_allocator"):
        TrainConfig(cpu_allocator="jemalloc")
