"""The Triton kernels with every hash function (``"hash"``), TiledGrid's wrapped levels and level
reductions, against tiny-cuda-nn's definitions and the plain-PyTorch reference.

Without a GPU they run in Triton's interpreter (``TRITON_INTERPRET=1``, set for this module by the
``triton_interpreter`` fixture of ``tests/conftest.py``) on small inputs; the compiled code is checked
by compiling it for an H100 without one.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install 'ngp[gpu]'); Triton kernels untested")

import ngp  # noqa: E402
from backend_checks import assert_backend_matches_reference  # noqa: E402
from hash_definitions import HASHES, tcnn_hash  # noqa: E402
from ngp.kernels.reference.hashgrid import GridLayout  # noqa: E402
from ngp.kernels.triton import hashgrid as tk  # noqa: E402
from ngp.kernels.triton import kernels_for_mode  # noqa: E402
from ngp.ops.hashgrid import hash_grid_encode  # noqa: E402

pytestmark = pytest.mark.usefixtures("triton_interpreter")

CELLS = [(7,), (123457,), (2047, 1234), (70000, 3), (5, 0, 3), (700_000, 1, 650_000), (65536, 2, 70000, 9)]


@pytest.mark.parametrize("name", HASHES)
def test_triton_kernels_index_like_tiny_cuda_nn(name, monkeypatch):
    monkeypatch.setenv("NGP_BACKEND", "triton")
    for cell in CELLS:
        for size in (2**19, 1000):  # masked (POW2) and modulo rows
            resolution = 2 * max(cell)
            layout = GridLayout(len(cell), 1, (resolution,), (0, size), (True,), name)
            table = torch.arange(size, dtype=torch.float64)[:, None]
            x = torch.tensor([cell], dtype=torch.float64) / resolution
            got = int(hash_grid_encode(x, table, layout, "Nearest").item())
            assert got == tcnn_hash(cell, name) % size, (cell, size)


CASES = [(name, d) for name in HASHES for d in (2, 3)] + [("Prime", 1), ("Rng", 1), ("BaseConvert", 4), ("Rng", 4)]


@pytest.mark.parametrize("name, d", CASES)
def test_triton_matches_reference_for_every_hash(name, d, monkeypatch):
    g = torch.Generator().manual_seed(d)
    layout = GridLayout.create(d, 3, 2, {1: 2, 2: 5, 3: 6, 4: 7}[d], 3, 2.0, hash_function=name)
    odd = GridLayout(d, 2, (3, 5), (0, 37, 74), (True, True), name)  # T = 37: rows by % T
    for lay in (layout, odd):
        assert any(lay.hashed)
        x = torch.rand(24, d, generator=g, dtype=torch.float64) * 1.2 - 0.1
        table = torch.randn(lay.n_rows, 2, generator=g, dtype=torch.float64)
        grad_out = torch.randn(24, lay.n_output_dims, generator=g, dtype=torch.float64)
        assert_backend_matches_reference("triton", x, table, lay, grad_out, monkeypatch)


@pytest.mark.parametrize("d", [2, 3])
def test_triton_tiled_levels_match_reference(d, monkeypatch):
    layout = GridLayout.create(d, 3, 2, 19, 3, 1.7, tiled=True)
    assert layout.hash_function == "Tiled" and any(layout.hashed)
    x = torch.rand(24, d, dtype=torch.float64)
    table = torch.randn(layout.n_rows, 2, dtype=torch.float64)
    grad_out = torch.randn(24, layout.n_output_dims, dtype=torch.float64)
    assert_backend_matches_reference("triton", x, table, layout, grad_out, monkeypatch)


@pytest.mark.parametrize("reduction", ["Sum", "Product"])
def test_triton_level_reduction_matches_reference(reduction, monkeypatch):
    config = {"otype": "HashGrid", "n_levels": 3, "n_features_per_level": 2, "log2_hashmap_size": 6,
              "base_resolution": 4, "per_level_scale": 1.7, "reduction": reduction, "hash": "Prime"}
    grid = ngp.Encoding(3, config, seed=2, dtype=torch.float64)
    with torch.no_grad():
        grid.table.uniform_(0.5, 1.5)
    x = torch.rand(20, 3, dtype=torch.float64)
    results = []
    for backend in ("reference", "triton"):
        monkeypatch.setenv("NGP_BACKEND", backend)
        xi = x.clone().requires_grad_()
        grid.zero_grad()
        out = grid(xi)
        out.square().sum().backward()
        results.append((out.detach(), xi.grad, grid.table.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hash_code, pow2", [(2, 0), (3, 1), (4, 1), (5, 0)])
def test_hash_kernels_compile_for_an_h100_without_a_gpu(monkeypatch, hash_code, pow2):
    """The interpreter accepts what the compiler may not (uint64 PCG arithmetic, constexpr branches):
    compile every kernel for sm_90 (Triton ships ptxas; no GPU needed) with each hash function."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    import triton

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:  # pragma: no cover - depends on the Triton version
        pytest.skip(f"this Triton has no offline compile API: {exc}")
    compiled = kernels_for_mode(tk.__name__)
    const = {"D": 3, "F": 2, "INTERP": 1, "BLOCK": 128,
             **tk._hash_constexprs(torch.zeros(1, 8, dtype=torch.int64), hash_code, bool(pow2))}
    common = {"meta_ptr": "*i64", "scales_ptr": "*fp32", "n_points": "i32", "out_stride": "i32", "n_levels": "i32"}
    signatures = {
        "_forward_kernel": {"x_ptr": "*fp32", "table_ptr": "*fp16", "out_ptr": "*fp32"},
        "_backward_table_kernel": {"x_ptr": "*fp32", "grad_out_ptr": "*fp32", "grad_table_ptr": "*fp32"},
        "_backward_x_kernel": {"x_ptr": "*fp32", "table_ptr": "*fp16", "grad_out_ptr": "*fp32", "grad_x_ptr": "*fp32"},
    }
    for name, sig in signatures.items():
        fn = getattr(compiled, name)
        full = {arg: {**common, **sig}.get(arg, "constexpr") for arg in fn.arg_names}
        kernel = triton.compile(ASTSource(fn=fn, signature=full, constexprs=const), target=GPUTarget("cuda", 90, 32),
                                options={"enable_fp_fusion": False})
        assert len(kernel.asm["cubin"]) > 0, name
        if not pow2:
            assert "rem.u32" in kernel.asm["ptx"], name  # rows by % T


#: Factors no built-in hash uses: an even first factor, a large odd one, one past 2^31.
SEARCHED = (6, 3000000019, 2147483659, 12345)


@pytest.mark.parametrize("d", [2, 3])
def test_triton_kernels_take_searched_primes(d, monkeypatch):
    """A layout's ``hash_primes`` reach the Triton kernels (compile-time constants P0..P3): rows as
    the xor-of-products definition, forward and gradients as the reference."""
    monkeypatch.setenv("NGP_BACKEND", "triton")
    cell = (70000, 3, 650_000)[:d]
    layout = GridLayout(d, 1, (2 * max(cell),), (0, 1000), (True,), "CoherentPrime", SEARCHED[:d])
    table = torch.arange(1000, dtype=torch.float64)[:, None]
    x = torch.tensor([cell], dtype=torch.float64) / (2 * max(cell))
    expected = 0
    for c, p in zip(cell, SEARCHED):
        expected ^= (c * p) & 0xFFFFFFFF
    assert int(hash_grid_encode(x, table, layout, "Nearest").item()) == expected % 1000
    g = torch.Generator().manual_seed(d)
    lay = GridLayout.create(d, 3, 2, 5, 3, 2.0, hash_primes=SEARCHED[:d])
    x = torch.rand(24, d, generator=g, dtype=torch.float64)
    table = torch.randn(lay.n_rows, 2, generator=g, dtype=torch.float64)
    grad_out = torch.randn(24, lay.n_output_dims, generator=g, dtype=torch.float64)
    assert_backend_matches_reference("triton", x, table, lay, grad_out, monkeypatch)
