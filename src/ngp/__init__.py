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

# Torch and Numba each run an OpenMP thread pool and a training step alternates between them. With
# OpenMP's default active waiting, the idle pool's threads spin and starve the other: measured here
# up to 9x slower steps on 2 cores. Passive waiting must be chosen before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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

from ngp.config import ConfigError, load_config  # noqa: E402
from ngp.encodings import Encoding, Module, free_temporary_memory, supports_jit_fusion  # noqa: E402
from ngp.losses import build_loss  # noqa: E402
from ngp.networks import Network, NetworkWithInputEncoding  # noqa: E402
from ngp.optim import build_optimizer  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "Encoding", "Module", "Network", "NetworkWithInputEncoding", "build_loss", "build_optimizer",
    "free_temporary_memory", "load_config", "supports_jit_fusion", "__version__",
]
