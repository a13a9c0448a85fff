"""tiny-cuda-nn's five grid hash functions (``"hash"``), TiledGrid's wrapped levels and the level
``"reduction"``: the reference against tiny-cuda-nn's definitions (computed independently in plain
Python integers, ``hash_definitions.py``), the Numba kernels against the reference (forward and both
gradients), and gradcheck of the reference. The Triton kernels: ``test_triton_hash_functions.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import ngp
from backend_checks import assert_backend_matches_reference, encode_with_grads
from hash_definitions import HASHES, pcg32_after, tcnn_hash
from ngp.kernels.reference.hashgrid import GridLayout, spatial_hash
from ngp.ops.hashgrid import hash_grid_encode

#: Vertices with small, large (in 4-D beyond 2^16, where Rng's per-axis bit fields overlap) and
#: mixed coordinates, in 1 to 4 dimensions.
CELLS = [(0,), (7,), (123457,), (1, 1), (2047, 1234), (70000, 3), (1, 1, 1), (5, 0, 3), (2047, 1234, 999),
         (700_000, 1, 650_000), (3, 1, 4, 1), (65536, 2, 70000, 9)]


def test_pcg_jump_ahead_matches_plain_stepping():
    """The definitions file's two ways of advancing PCG32 agree (so either checks the code below)."""
    for steps in (0, 1, 2, 3, 100, 1337, 4096):
        assert pcg32_after(steps) == pcg32_after(steps, naive=True)


@pytest.mark.parametrize("name", HASHES)
@pytest.mark.parametrize("cell", CELLS, ids=str)
def test_reference_hash_matches_tiny_cuda_nn(name, cell):
    for size in (2**19, 1000):  # a power of two, and not
        expected = tcnn_hash(cell, name) % size
        assert spatial_hash(torch.tensor([cell]), size, name).item() == expected


def test_hashes_differ_and_coherent_prime_is_the_default():
    cell = torch.tensor([(2047, 1234, 999)])
    rows = {name: spatial_hash(cell, 2**19, name).item() for name in HASHES}
    assert len(set(rows.values())) == len(HASHES)
    assert spatial_hash(cell, 2**19).item() == rows["CoherentPrime"]


def vertex_readback(cell, name, size, backend, monkeypatch, dtype=torch.float64):
    """The row a kernel reads for a point exactly on vertex ``cell`` of a one-level hashed grid whose
    table holds each row's own index (Nearest and Linear put all the weight on that vertex)."""
    monkeypatch.setenv("NGP_BACKEND", backend)
    resolution = 2 * max(max(cell), 1)
    layout = GridLayout(len(cell), 1, (resolution,), (0, size), (True,), name)
    table = torch.arange(size, dtype=dtype)[:, None]
    x = torch.tensor([cell], dtype=dtype) / resolution
    return [int(hash_grid_encode(x, table, layout, interpolation).item()) for interpolation in ("Nearest", "Linear")]


@pytest.mark.parametrize("name", HASHES)
@pytest.mark.parametrize("cell", CELLS, ids=str)
def test_numba_kernels_index_like_tiny_cuda_nn(name, cell, monkeypatch):
    for size in (2**19, 1000):  # masked and modulo rows
        expected = tcnn_hash(cell, name) % size
        assert vertex_readback(cell, name, size, "numba", monkeypatch) == [expected, expected]


# ----------------------------------------------------------------------------------------------------
# Numba against the reference: forward, table and input gradients, every hash, 1 to 4 dims
# ----------------------------------------------------------------------------------------------------


def layouts(d: int, name: str):
    """A mixed layout (coarse dense, fine hashed, 2^T) and an all-hashed one with T = 37 (not 2^k)."""
    mixed = GridLayout.create(d, 4, 2, {1: 3, 2: 5, 3: 7, 4: 9}[d], 2, 1.8, hash_function=name)
    odd = GridLayout(d, 2, (3, 5, 9), (0, 37, 74, 111), (True, True, True), name)
    return [mixed, odd]


@pytest.mark.parametrize("name", HASHES)
@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_numba_matches_reference_for_every_hash(name, d, monkeypatch):
    g = torch.Generator().manual_seed(d)
    for layout in layouts(d, name):
        assert any(layout.hashed)
        x = torch.rand(150, d, generator=g, dtype=torch.float64) * 1.2 - 0.1  # some outside: clamped
        table = torch.randn(layout.n_rows, 2, generator=g, dtype=torch.float64)
        grad_out = torch.randn(150, layout.n_output_dims, generator=g, dtype=torch.float64)
        for interpolation in ("Linear", "Smoothstep"):
            got = assert_backend_matches_reference("numba", x, table, layout, grad_out, monkeypatch, interpolation)
            assert got[1].abs().sum() > 0 and got[2].abs().sum() > 0


@pytest.mark.parametrize("name", HASHES)
def test_reference_gradcheck_for_every_hash(name, monkeypatch):
    monkeypatch.setenv("NGP_BACKEND", "reference")
    layout = GridLayout.create(2, 3, 2, 4, 3, 1.6, hash_function=name)
    assert any(layout.hashed)
    g = torch.Generator().manual_seed(5)
    # points away from cell borders (where the d-linear interpolation has a kink)
    x = (torch.rand(6, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    table = torch.randn(layout.n_rows, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: hash_grid_encode(x, t, layout, "Smoothstep"), (x, table))


# ----------------------------------------------------------------------------------------------------
# TiledGrid: wrapped levels
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
def test_tiled_levels_wrap_the_dense_index(d, monkeypatch):
    layout = GridLayout.create(d, 3, 1, 19, 3, 2.0, tiled=True)
    size = (layout.resolutions[0] + 1) ** d
    assert layout.hashed == (False, True, True) and layout.offsets == (0, size, 2 * size, 3 * size)
    res = layout.resolutions[2]
    vertices = torch.cartesian_prod(*[torch.arange(res + 1)] * d).reshape(-1, d)
    dense = (vertices * torch.tensor([(res + 1) ** i for i in range(d)])).sum(-1)
    table = torch.arange(layout.n_rows, dtype=torch.float64)[:, None]
    for backend in ("reference", "numba"):
        monkeypatch.setenv("NGP_BACKEND", backend)
        rows = hash_grid_encode(vertices.double() / res, table, layout, "Nearest")[:, 2].long()
        assert torch.equal(rows, 2 * size + dense % size), backend


def test_tiled_grid_encoding_and_its_grid_type_spelling():
    tiled = ngp.Encoding(3, {"otype": "TiledGrid", "n_levels": 3, "base_resolution": 4, "per_level_scale": 2.0})
    generic = ngp.Encoding(3, {"otype": "Grid", "type": "Tiled", "n_levels": 3, "base_resolution": 4,
                               "per_level_scale": 2.0})
    assert tiled.layout == generic.layout and tiled.layout.hash_function == "Tiled"
    assert tiled.layout.n_rows == 3 * 5**3  # every level reuses the coarsest level's 5^3 rows


@pytest.mark.parametrize("d", [2, 3])
def test_numba_tiled_matches_reference(d, monkeypatch):
    layout = GridLayout.create(d, 4, 2, 19, 3, 1.7, tiled=True)
    x = torch.rand(100, d, dtype=torch.float64)
    table = torch.randn(layout.n_rows, 2, dtype=torch.float64)
    grad_out = torch.randn(100, layout.n_output_dims, dtype=torch.float64)
    assert_backend_matches_reference("numba", x, table, layout, grad_out, monkeypatch)


# ----------------------------------------------------------------------------------------------------
# Config keys: "hash", "fixed_point_pos", "reduction"
# ----------------------------------------------------------------------------------------------------


def test_hash_key_reaches_the_layout_case_insensitively():
    enc = ngp.Encoding(3, {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 10, "hash": "reversedprime"})
    assert enc.layout.hash_function == "ReversedPrime" and "hash=ReversedPrime" in repr(enc)
    assert ngp.Encoding(3, {"otype": "HashGrid"}).layout.hash_function == "CoherentPrime"
    with pytest.raises(ngp.ConfigError, match="hash='Morton'"):
        ngp.Encoding(3, {"otype": "HashGrid", "hash": "Morton"})
    with pytest.raises(ngp.ConfigError, match="hash="):
        ngp.Encoding(3, {"otype": "HashGrid", "hash": "Tiled"})  # internal to TiledGrid, not a config value


def test_fixed_point_pos_is_accepted_without_effect():
    config = {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 10, "per_level_scale": 1.5}
    plain = ngp.Encoding(2, config, seed=3)
    fixed = ngp.Encoding(2, {**config, "fixed_point_pos": True}, seed=3)
    x = torch.rand(20, 2)
    assert torch.equal(plain(x), fixed(x))
    with pytest.raises(ngp.ConfigError, match="fixed_point_pos"):
        ngp.Encoding(2, {**config, "fixed_point_pos": "yes"})
    with pytest.raises(ngp.ConfigError, match="stochastic_interpolation"):
        ngp.Encoding(2, {**config, "stochastic_interpolation": True})


@pytest.mark.parametrize("reduction", ["sum", "Product", "concatenation"])
def test_level_reduction_combines_the_levels(reduction):
    config = {"otype": "HashGrid", "n_levels": 5, "n_features_per_level": 2, "log2_hashmap_size": 10,
              "per_level_scale": 1.5}
    concat = ngp.Encoding(3, config, seed=1)
    reduced = ngp.Encoding(3, {**config, "reduction": reduction}, seed=1)
    x = torch.rand(30, 3, dtype=torch.float64)
    concat, reduced = concat.double(), reduced.double()
    levels = concat(x).reshape(30, 5, 2)
    expected = {"sum": levels.sum(1), "product": levels.prod(1), "concatenation": levels.reshape(30, 10)}
    torch.testing.assert_close(reduced(x), expected[reduction.lower()])
    assert reduced.n_output_dims == (10 if reduction == "concatenation" else 2)


@pytest.mark.parametrize("reduction", ["Sum", "Product"])
def test_reduction_gradients_match_the_reference(reduction, monkeypatch):
    config = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 8,
              "base_resolution": 4, "per_level_scale": 1.7, "reduction": reduction}
    grid = ngp.Encoding(3, config, seed=2, dtype=torch.float64)
    with torch.no_grad():
        grid.table.uniform_(0.5, 1.5)  # products of 1e-4-sized features would all be ~0
    x = torch.rand(40, 3, dtype=torch.float64)
    results = []
    for backend in ("reference", "numba"):
        monkeypatch.setenv("NGP_BACKEND", backend)
        xi = x.clone().requires_grad_()
        grid.zero_grad()
        out = grid(xi)
        gx, = torch.autograd.grad(out.square().sum(), xi, retain_graph=True)
        out.square().sum().backward()
        results.append((out.detach(), gx, grid.table.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    monkeypatch.setenv("NGP_BACKEND", "reference")
    xs = (torch.rand(4, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(grid, (xs,))


# ----------------------------------------------------------------------------------------------------
# Searched hashes: a layout's own factors (``hash_primes``), as ngp.encodings.hash_search finds them
# ----------------------------------------------------------------------------------------------------

#: Factors no built-in hash uses: an even first factor, a large odd one, one past 2^31.
SEARCHED = (6, 3000000019, 2147483659, 12345)


def xor_of_products(cell, primes):
    row = 0
    for c, p in zip(cell, primes):
        row ^= (c * p) & 0xFFFFFFFF
    return row


@pytest.mark.parametrize("cell", CELLS, ids=str)
def test_searched_primes_index_as_the_xor_of_products(cell, monkeypatch):
    primes = SEARCHED[:len(cell)]
    for size in (2**19, 1000):
        expected = xor_of_products(cell, primes) % size
        assert spatial_hash(torch.tensor([cell]), size, "CoherentPrime", primes).item() == expected
        # CoherentPrime's fast Numba path has its own primes built in: the searched ones must bypass it
        resolution = 2 * max(max(cell), 1)
        layout = GridLayout(len(cell), 1, (resolution,), (0, size), (True,), "CoherentPrime", primes)
        monkeypatch.setenv("NGP_BACKEND", "numba")
        x = torch.tensor([cell], dtype=torch.float64) / resolution
        table = torch.arange(size, dtype=torch.float64)[:, None]
        assert int(hash_grid_encode(x, table, layout, "Nearest").item()) == expected


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_numba_matches_reference_with_searched_primes(d, monkeypatch):
    g = torch.Generator().manual_seed(d)
    for layout in layouts(d, "CoherentPrime"):
        layout = dataclasses.replace(layout, hash_primes=SEARCHED[:d])
        x = torch.rand(150, d, generator=g, dtype=torch.float64)
        table = torch.randn(layout.n_rows, 2, generator=g, dtype=torch.float64)
        grad_out = torch.randn(150, layout.n_output_dims, generator=g, dtype=torch.float64)
        got = assert_backend_matches_reference("numba", x, table, layout, grad_out, monkeypatch)
        default = encode_with_grads(x, table, dataclasses.replace(layout, hash_primes=()), "Linear", grad_out)
        assert not torch.equal(default[0], got[0])  # the primes changed the rows


def test_reference_gradcheck_with_searched_primes(monkeypatch):
    monkeypatch.setenv("NGP_BACKEND", "reference")
    layout = GridLayout.create(2, 3, 2, 4, 3, 1.6, hash_primes=(7, 40503))
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(6, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    table = torch.randn(layout.n_rows, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: hash_grid_encode(x, t, layout, "Linear"), (x, table))


def test_hash_primes_key():
    config = {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 10, "hash_primes": [1, 19349663, 83492791]}
    enc = ngp.Encoding(3, config)
    assert enc.layout.hash_primes == (1, 19349663, 83492791) and "hash_primes=[1, 19349663, 83492791]" in repr(enc)
    assert ngp.Encoding(3, {**config, "hash": "Prime"}).layout.primes[:3] == (1, 19349663, 83492791)
    for bad, message in [([1, 2], "3 to 4 hash primes"), ([1, 2, 0], r"\[1, 2\^32\)"), ([1, 2, 2**32], r"2\^32"),
                         ([1, 2, 3.5], "integers"), ("1,2,3", "list of 3 integers")]:
        with pytest.raises(ngp.ConfigError, match=message):
            ngp.Encoding(3, {**config, "hash_primes": bad})
    with pytest.raises(ngp.ConfigError, match="xor-of-products"):
        ngp.Encoding(3, {**config, "hash": "BaseConvert"})
    with pytest.raises(ngp.ConfigError, match="Tiled grid"):
        ngp.Encoding(3, {**config, "otype": "TiledGrid"})

