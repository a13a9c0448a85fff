"""What ``import ngp`` sets for the whole process (see ``ngp/__init__.py``)."""

import os
import subprocess
import sys

import pytest

# Allocates and frees a 40 MB tensor (above glibc's largest mmap threshold, so by default mapped
# afresh and zeroed by the kernel every time) and prints the median page faults of a round after a
# warm-up. The median, not the mean: the kernel sometimes faults kept pages in a round or two
# (migrating, collapsing or NUMA-scanning them; a mean of 53 and 80 per round seen in CI).
_PROBE = """
import resource, statistics
import ngp, torch
for _ in range(3):
    torch.empty(10 << 20).fill_(1.0)
faults = []
for _ in range(21):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(10 << 20).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults))
"""


def _fresh_python(code: str, unset: tuple[str, ...], **env) -> str:
    """What ``code`` prints in a new interpreter, with this environment less ``unset``, plus ``env``."""
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                          check=True).stdout


def _faults_per_round(**env) -> float:
    return float(_fresh_python(_PROBE, ("NGP_KEEP_FREED_MEMORY",), **env).strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc options: Linux only")
def test_import_keeps_freed_memory_for_the_next_allocation():
    if "malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in os.environ):
        pytest.skip("malloc options set in this environment: ngp leaves them alone")
    kept = _faults_per_round()
    returned = _faults_per_round(NGP_KEEP_FREED_MEMORY="0")
    assert returned >= 10, f"the probe should fault without the setting ({returned} faults per round)"
    # the median is 0 against ~530: a tenth leaves room for the kernel's own faults in most rounds
    assert kept < 0.1 * returned, f"a freed 40 MB block should be reused without page faults, got {kept} per " \
                                  f"round against {returned} without the setting"


def _openmp_settings_after_import(**env) -> list[str]:
    """``[OMP_WAIT_POLICY, GOMP_SPINCOUNT]`` in a fresh process after ``import ngp`` ("None": unset)."""
    probe = "import os, ngp; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    return _fresh_python(probe, ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"), **env).split()[-2:]


def test_import_has_openmp_threads_spin_then_sleep_unless_the_user_chose():
    assert _openmp_settings_after_import() == ["PASSIVE", "10000000"]
    assert _openmp_settings_after_import(OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "None"]
    assert _openmp_settings_after_import(GOMP_SPINCOUNT="5") == ["None", "5"]


# Records the torch functions called while `import ngp` runs: name, dtype and size of the first argument.
_RECORD_IMPORT = """
import torch
from torch.overrides import TorchFunctionMode
calls = []
class Record(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        first = args[0] if args else None
        if isinstance(first, torch.Tensor):
            calls.append((getattr(func, "__name__", ""), str(first.dtype), first.numel()))
        return func(*args, **(kwargs or {}))
with Record():
    import ngp
print(repr((ngp.VECTOR_MATH_OPS, calls)))
"""


def test_import_has_mkl_choose_each_vector_math_kernel_on_one_thread():
    """MKL 2024.2 picks a vector-maths kernel at its first call, and threads that make it together can
    get a low-accuracy one (pytorch/pytorch#188792): ``import ngp`` first calls each such op on a tensor
    too small for torch to split over threads (ATen's grain for these ops: 2048 elements)."""
    ops, calls = eval(_fresh_python(_RECORD_IMPORT, ()).strip().splitlines()[-1])
    assert {"exp", "log", "sqrt", "sin", "cos"} <= set(ops)
    for dtype in ("torch.float32", "torch.float64"):
        for op in ops:
            sizes = [n for name, d, n in calls if name == op and d == dtype]
            assert sizes and sizes[0] < 2048, f"import ngp should first run {op} on a few {dtype} elements " \
                                              f"(one thread), got calls of {sizes}"
