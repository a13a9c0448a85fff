"""ngp — Instant Neural Graphics Primitives (Müller et al. 2022) in PyTorch, fast on CPU and GPU.

The building blocks mirror tiny-cuda-nn::

    import ngp
    model = ngp.NetworkWithInputEncoding(
        n_input_dims=2, n_output_dims=3,
        encoding_config={"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2,
                         "log2_hashmap_size": 19, "base_resolution": 16, "per_level_scale": 1.5},
        network_config={"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                        "n_neurons": 64, "n_hidden_layers": 2},
    )
    optimizer = ngp.build_optimizer({"otype": "Adam", "learning_rate": 1e-2}, model)

tiny-cuda-nn's PyTorch API is here under the same names (``Encoding``, ``Network``,
``NetworkWithInputEncoding``, ``Module``, ``supports_jit_fusion``, ``free_temporary_memory``), so
``import ngp as tcnn`` runs code written for ``tinycudann``; see ``docs/compat.md``.
"""

import os

# Torch and Numba each run an OpenMP thread pool (torch's own libgomp and the system's, which Numba's
# omp layer loads), and a step alternates between them hundreds of times. With libgomp's default (spin
# ~3 ms, then sleep) the idle pool's threads spun and starved the other: up to 9x slower steps on 2
# cores (measured early on). Sleeping at once (passive) has every parallel region wake its threads
# through the kernel, which costs most on virtual machines (an idle vCPU halts; a [73728, 32] x
# [32, 64] product took 0.8 ms back to back, ~2 ms after its threads slept 5 ms). So the threads spin
# first, up to ~0.1 s (10M of libgomp's spins, ~100k per ms): long enough to span the gaps between one
# pool's regions within a step. Measured (alternating processes, against ~1 ms of spinning): on an
# Intel Xeon VM late lego steps median 193 -> 167 ms (6 pairs, each faster), lego frames 2.34 -> 2.15 s
# (5 of 6 faster), a fox loop with its grid updates 216-235 -> 181-194 ms per step (3 pairs), image and
# SDF fits unchanged. (On a Zen 5 VM ~1 ms of spinning against none trained resumed 30-s lego sessions
# at 624-693k -> 763-799k samples/s; 10k, 1M spins and ACTIVE alike there.) The cost: on cores that
# other processes keep busy, spinning threads take their time slices (an image fit's 100 steps beside
# two busy processes: 13.1 / 14.3 s with ~1 ms of spinning, 14.4 / 20.8 s with ~0.1 s); set
# OMP_WAIT_POLICY=PASSIVE on such a machine.
# Both are read when each library first loads, so before torch and Numba are imported.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["GOMP_SPINCOUNT"] = "10000000"  # ~0.1 s at libgomp's ~100k spins per ms
# Training allocates and frees buffers of tens of MB every step (gradients of the hash tables,
# activations). Without huge pages each one costs thousands of page faults: measured 12 s of 35 s
# in the kernel for a NeRF benchmark, 7 s with them. Read by torch's CPU allocator at its first use.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
# oneDNN (torch's bfloat16 matrix products on a CPU) caches a compiled primitive per shape, up to 1024.
# Training pads its products' rows to a few sizes (ngp.networks.pad_rows), so a step's ~25 shapes
# repeat; 16 entries evicted them every step (late lego steps 98-104 ms against 85-93 ms with 256,
# alternating, peak memory +50-150 MB), while the unbounded default kept every rendering shape (2.5 GB
# peak before the padding). Read at oneDNN's first use.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")


def _keep_freed_memory() -> None:
    """Have glibc's malloc serve every block from its heap and keep freed memory for the next one.

    A NeRF step allocates and frees tens of buffers of 1-50 MB (a pre-pass round's samples and
    features, padded products, gradients). By default glibc maps each block above its threshold (at
    most 32 MB) afresh and unmaps it when freed, so the kernel zeroes every page again: ~1,000 page
    faults and 6-10 ms of kernel time per lego pre-pass (of ~45 ms), 15 % of a training run's CPU
    time. Served from the heap and kept, the pages are reused (huge pages too: torch still advises
    them). Measured (lego, late steps, `benchmarks/bench_nerf.py --from-run`, 4 alternations):
    steps 98-100 -> 80-100 ms (median 99 -> 86), a 800x800 frame 2.13-2.24 -> 1.86-1.92 s; peak
    memory +180 MB (freed memory stays with the process, up to 2 GB of it). A 32 MB mmap threshold
    alone made the backward twice as slow. Skipped where the user set malloc's options
    (``GLIBC_TUNABLES``, ``MALLOC_*``), with ``NGP_KEEP_FREED_MEMORY=0``, or without glibc."""
    import ctypes
    import sys

    if os.environ.get("NGP_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return
    if "malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl has no such options
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt's parameter numbers (malloc.h)
    libc.mallopt(m_mmap_max, 0)  # no block gets its own mapping: all come from the heap
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)  # free heap memory is returned only above 2 GB


_keep_freed_memory()

from ngp.config import ConfigError, load_config  # noqa: E402
from ngp.encodings import Encoding, Module, free_temporary_memory, supports_jit_fusion  # noqa: E402
from ngp.losses import build_loss  # noqa: E402
from ngp.networks import Network, NetworkWithInputEncoding  # noqa: E402
from ngp.optim import build_optimizer  # noqa: E402

#: torch's CPU ops that run on MKL's vector maths (VML) for float32 and float64 (ATen's ``cpu/vml.h``).
VECTOR_MATH_OPS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin",
                   "sqrt", "tan", "tanh", "trunc")


def _settle_vector_math() -> None:
    """Have MKL choose each vector-maths kernel on this thread, before two threads can choose together.

    torch hands a large float tensor's ``exp``, ``log``, ``sqrt``, ... to MKL's VML, one call per OpenMP
    thread on its share of the elements. MKL 2024.2 (torch 2.x's wheels) picks a function's kernel
    (instruction set, accuracy) at its first call, and when threads make that first call together one of
    them can run a low-accuracy kernel over its whole share (pytorch/pytorch#188792). Seen here: the
    first density ``exp`` of a process off by up to 7e-5 relative on one thread's half of the rows, so a
    grid update, and with it the training, differed between processes now and then (about 1 in 10).
    One element per function and dtype runs on the calling thread and settles the choice, as the
    upstream fix does (pytorch/pytorch#188791); ~0.1 ms at import. ``NGP_SETTLE_VECTOR_MATH=0`` skips
    it (``benchmarks/check_first_exp.py`` counts the processes it spares)."""
    import torch

    if os.environ.get("NGP_SETTLE_VECTOR_MATH", "1") == "0":
        return
    for dtype in (torch.float32, torch.float64):
        one = torch.full((1,), 0.5, dtype=dtype)
        for name in VECTOR_MATH_OPS:
            getattr(torch, name)(one)


_settle_vector_math()

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "Encoding", "Module", "Network", "NetworkWithInputEncoding", "build_loss", "build_optimizer",
    "free_temporary_memory", "load_config", "supports_jit_fusion", "__version__",
]
