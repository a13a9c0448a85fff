"""The compiled hash-grid kernels (Numba) and the op against the plain-PyTorch reference.

These batches are smaller than ``PARALLEL_MIN_POINTS``: the kernels run on the calling thread only.
The multithreaded branch is compared with the reference in ``tests/test_hashgrid_parallel.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ngp.kernels.cpu import hashgrid as cpu
from ngp.kernels.reference import hashgrid as ref
from ngp.kernels.reference.hashgrid import PRIMES, GridLayout, spatial_hash
from ngp.ops.hashgrid import hash_grid_encode, hash_grid_encode_as

INTERPOLATIONS = ("Linear", "Smoothstep", "Nearest")


@pytest.fixture(autouse=True)
def _numba_backend(monkeypatch):
    """Every test here runs the compiled path unless it says otherwise."""
    monkeypatch.setenv("NGP_BACKEND", "numba")


def make_layout(d: int, kind: str, n_features: int = 2) -> GridLayout:
    """Small layouts: all levels dense, all hashed, or both (coarse dense, fine hashed)."""
    if kind == "dense":
        return GridLayout.create(d, 3, n_features, 20, 2, 1.5, hash=False)
    if kind == "hashed":
        return GridLayout.create(d, 3, n_features, 3, 4, 1.5)  # (4+1)^d > 2^3 for every d >= 2
    if kind == "mixed":
        return GridLayout.create(d, 5, n_features, {1: 3, 2: 5, 3: 7, 4: 9}[d], 2, 1.7)
    raise ValueError(kind)


def sample_points(n: int, d: int, dtype, seed: int = 0) -> torch.Tensor:
    """Random points, a few outside [0, 1], plus 0 and 1 exactly on some axes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=dtype)
    x[: n // 8] = x[: n // 8] * 1.6 - 0.3
    x[-3:] = torch.tensor([0.0, 1.0, 0.5], dtype=dtype)[:, None]
    x[-4, 0], x[-5, -1] = 0.0, 1.0
    return x


def run_both(x, table, layout, interpolation):
    """Forward and gradients (table and x) through the op and through the reference."""
    results = []
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(x.shape[0], layout.n_output_dims, generator=g, dtype=x.dtype)
    for encode in (hash_grid_encode, ref.hash_grid_encode):
        xi, ti = x.clone().requires_grad_(), table.clone().requires_grad_()
        out = encode(xi, ti, layout, interpolation)
        out.backward(grad_out)
        grad_x = xi.grad if xi.grad is not None else torch.zeros_like(x)  # Nearest: no path to x
        results.append((out.detach(), ti.grad, grad_x))
    return results


def assert_close(actual, expected, rtol, atol_scale):
    """Elementwise closeness, with the absolute tolerance relative to the largest expected value."""
    atol = atol_scale * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------------
# Compiled vs reference
# ----------------------------------------------------------------------------------------------------

KINDS = ("dense", "hashed", "mixed")
CASES = [(d, kind, interp, 2) for d in (1, 2, 3, 4) for kind in KINDS for interp in INTERPOLATIONS]
CASES += [(d, "mixed", "Linear", f) for d in (1, 2, 3, 4) for f in (1, 4, 8)]
CASES += [(d, "mixed", "Smoothstep", 8) for d in (2, 3)]


@pytest.mark.parametrize("d, kind, interpolation, n_features", CASES)
def test_float64_matches_reference(d, kind, interpolation, n_features):
    layout = make_layout(d, kind, n_features)
    if kind == "hashed":
        assert all(layout.hashed) or d == 1  # 1-D levels never outgrow the table
    if kind == "mixed" and d > 1:
        assert any(layout.hashed) and not all(layout.hashed)
    x = sample_points(300, d, torch.float64)
    table = torch.randn(layout.n_rows, n_features, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (out, gt, gx), (out_r, gt_r, gx_r) = run_both(x, table, layout, interpolation)
    assert_close(out, out_r, rtol=1e-12, atol_scale=1e-12)
    assert_close(gt, gt_r, rtol=1e-12, atol_scale=1e-12)
    assert_close(gx, gx_r, rtol=1e-10, atol_scale=1e-10)
    outside = (x < 0) | (x > 1)
    assert outside.any() and (gx[outside] == 0).all()
    if interpolation == "Nearest":
        assert (gx == 0).all()
    else:
        assert gx.abs().max() > 0


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("interpolation", ["Linear", "Smoothstep"])
def test_float32_matches_reference(d, interpolation):
    layout = GridLayout.create(d, 8, 2, 12, 4, 1.6)
    x = sample_points(2000, d, torch.float32)
    table = torch.rand(layout.n_rows, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    (out, gt, gx), (out_r, gt_r, gx_r) = run_both(x, table, layout, interpolation)
    assert_close(out, out_r, rtol=1e-4, atol_scale=1e-5)
    assert_close(gt, gt_r, rtol=1e-4, atol_scale=1e-5)
    assert_close(gx, gx_r, rtol=1e-3, atol_scale=1e-4)


def test_non_power_of_two_hash_size():
    """Hashed levels of a hand-made layout with T = 37 (not a power of two) use ``% T``."""
    for d in (2, 3):
        layout = GridLayout(d, 2, (3, 5, 9), (0, 37, 74, 111), (True, True, True))
        x = sample_points(200, d, torch.float64)
        table = torch.randn(layout.n_rows, 2, dtype=torch.float64)
        (out, gt, gx), (out_r, gt_r, gx_r) = run_both(x, table, layout, "Linear")
        assert_close(out, out_r, rtol=1e-12, atol_scale=1e-12)
        assert_close(gt, gt_r, rtol=1e-12, atol_scale=1e-12)
        assert_close(gx, gx_r, rtol=1e-10, atol_scale=1e-10)


@pytest.mark.parametrize(
    "d, dtype", [(d, torch.float64) for d in (1, 2, 3, 4)] + [(d, torch.float32) for d in (2, 3)]
)
def test_cell_borders_and_clamping(d, dtype):
    """Points exactly on cell borders of every level, at 0 and 1, and outside [0, 1]."""
    layout = GridLayout.create(d, 3, 2, 6, 4, 2.0)  # resolutions 4, 8, 16: k/16 is on a border of each
    borders = torch.arange(17, dtype=dtype) / 16
    g = torch.Generator().manual_seed(4)
    x = borders[torch.randint(0, 17, (400, d), generator=g)]
    x[:40] = torch.tensor([-1.0, -1e-3, 1.0 + 1e-3, 2.5], dtype=dtype)[torch.randint(0, 4, (40, d), generator=g)]
    table = torch.randn(layout.n_rows, 2, dtype=dtype, generator=g)
    for interpolation in ("Linear", "Smoothstep"):
        (out, gt, gx), (out_r, gt_r, gx_r) = run_both(x, table, layout, interpolation)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert_close(out, out_r, rtol=tol, atol_scale=tol)
        assert_close(gt, gt_r, rtol=tol, atol_scale=tol)
        assert_close(gx, gx_r, rtol=tol * 10, atol_scale=tol * 10)
        assert (gx[:40] == 0).all()
        # Clamped points encode like their clamped coordinates.
        clamped = hash_grid_encode(x[:40].clamp(0, 1), table, layout, interpolation)
        assert_close(out[:40], clamped, rtol=tol, atol_scale=tol)


# ----------------------------------------------------------------------------------------------------
# gradcheck (float64): the reference and the compiled op
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("d, interpolation", [(2, "Linear"), (3, "Smoothstep"), (4, "Smoothstep")])
def test_gradcheck(monkeypatch, backend, d, interpolation):
    monkeypatch.setenv("NGP_BACKEND", backend)
    layout = GridLayout.create(d, 3, 2, 4, 2, 1.5)  # at most 16 rows per level: few columns to check
    g = torch.Generator().manual_seed(5)
    x = (0.05 + 0.9 * torch.rand(6, d, generator=g, dtype=torch.float64)).requires_grad_()
    table = torch.randn(layout.n_rows, 2, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: hash_grid_encode(a, b, layout, interpolation), (x, table))


def test_double_backward_reference_works_numba_says_how(monkeypatch):
    layout = GridLayout.create(3, 2, 2, 6, 2, 1.5)
    x = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    table = torch.randn(layout.n_rows, 2, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(hash_grid_encode(x, table, layout, "Smoothstep").sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="NGP_BACKEND=reference"):
        gx.sum().backward()
    monkeypatch.setenv("NGP_BACKEND", "reference")
    (gx,) = torch.autograd.grad(hash_grid_encode(x, table, layout, "Smoothstep").sum(), x, create_graph=True)
    gx.sum().backward()
    assert table.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------
# Indexing: the hash by hand, and dense levels 1:1
# ----------------------------------------------------------------------------------------------------


def hash_by_hand(cell, size):
    h = 0
    for c, prime in zip(cell, PRIMES):
        h ^= (c * prime) % 2**32
    return h % size


@pytest.mark.parametrize(
    "cell", [(1, 1), (1, 1, 1), (5, 0, 3), (2047, 1234, 999), (0, 2048, 7), (3, 1, 4, 1), (2048, 2048, 2048, 2048)]
)
def test_spatial_hash_spot_values(cell):
    size = 2**19
    expected = hash_by_hand(cell, size)
    if cell == (1, 1, 1):
        assert expected == (1 ^ 2654435761 ^ 805459861) % size
    assert spatial_hash(torch.tensor([cell]), size).item() == expected
    # The kernel: one hashed level at resolution 2048, table[row] = row, a point exactly on the
    # vertex (so all the weight is on it) reads back the vertex's row number.
    d = len(cell)
    layout = GridLayout(d, 1, (2048,), (0, size), (True,))
    table = torch.arange(size, dtype=torch.float64)[:, None]
    x = torch.tensor([cell], dtype=torch.float64) / 2048
    for interpolation in ("Nearest", "Linear"):
        assert hash_grid_encode(x, table, layout, interpolation).item() == expected


def test_one_hot_table_selects_one_hashed_vertex():
    """A one-hot table lights up exactly the points whose corner hashes to that row."""
    size = 64
    layout = GridLayout(3, 1, (4,), (0, size), (True,))
    row = hash_by_hand((1, 1, 1), size)
    table = torch.zeros(size, 1, dtype=torch.float64)
    table[row] = 1.0
    x = torch.tensor([[0.25, 0.25, 0.25], [0.3, 0.3, 0.3]], dtype=torch.float64)
    out = hash_grid_encode(x, table, layout, "Linear")
    assert out[0].item() == 1.0  # exactly on vertex (1, 1, 1)
    assert out[1].item() == pytest.approx(ref.hash_grid_encode(x, table, layout)[1].item(), abs=1e-14)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_dense_level_is_one_to_one(d):
    res = 5
    layout = GridLayout.create(d, 1, 1, 20, res, 1.0, hash=False)
    assert not layout.hashed[0] and layout.n_rows == (res + 1) ** d
    table = torch.arange(layout.n_rows, dtype=torch.float64)[:, None]
    axes = torch.meshgrid(*[torch.arange(res + 1, dtype=torch.float64)] * d, indexing="ij")
    vertices = torch.stack([a.reshape(-1) for a in axes], dim=-1)
    rows = hash_grid_encode(vertices / res, table, layout, "Nearest")[:, 0].long()
    strides = torch.tensor([(res + 1) ** i for i in range(d)])
    assert torch.equal(rows, (vertices.long() * strides).sum(-1))
    assert torch.equal(rows.sort().values, torch.arange(layout.n_rows))  # every row, once


# ----------------------------------------------------------------------------------------------------
# The op's contract: empty batches, validation, layouts of tensors
# ----------------------------------------------------------------------------------------------------


def test_empty_batch():
    layout = make_layout(3, "mixed")
    x = torch.zeros(0, 3, requires_grad=True)
    table = torch.randn(layout.n_rows, 2, requires_grad=True)
    out = hash_grid_encode(x, table, layout)
    assert out.shape == (0, layout.n_output_dims)
    out.sum().backward()
    assert x.grad.shape == (0, 3)
    assert table.grad.shape == table.shape and (table.grad == 0).all()


def test_validation_errors():
    layout = make_layout(3, "mixed")
    table = torch.randn(layout.n_rows, 2)
    x = torch.rand(4, 3)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        hash_grid_encode(torch.rand(4, 2), table, layout)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        hash_grid_encode(torch.rand(12), table, layout)
    with pytest.raises(ValueError, match="table must have shape"):
        hash_grid_encode(x, table[:-1], layout)
    with pytest.raises(ValueError, match="table must have shape"):
        hash_grid_encode(x, torch.randn(layout.n_rows, 4), layout)
    with pytest.raises(TypeError, match="same floating dtype"):
        hash_grid_encode(x.double(), table, layout)
    with pytest.raises(TypeError, match="same floating dtype"):
        hash_grid_encode((x * 10).long(), table.long(), layout)
    with pytest.raises(ValueError, match="unknown interpolation"):
        hash_grid_encode(x, table, layout, "Cubic")


def test_non_contiguous_inputs_and_no_grad_paths():
    layout = make_layout(2, "mixed")
    base = torch.rand(2, 50, dtype=torch.float64)
    x = base.t()  # non-contiguous [50, 2]
    table = torch.randn(layout.n_rows, 2, dtype=torch.float64)
    expected = ref.hash_grid_encode(x, table, layout)
    assert_close(hash_grid_encode(x, table, layout), expected, rtol=1e-12, atol_scale=1e-12)
    # Only the table requires grad: x gets none, and nothing fails.
    table.requires_grad_()
    hash_grid_encode(x, table, layout).sum().backward()
    assert table.grad is not None and x.grad is None


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("n_features", [2, 3])
def test_forward_and_table_gradient_across_staging_blocks(d, interpolation, n_features):
    """The 2-D and 3-D forwards and table gradients compute corners and weights in blocks of
    STAGE_BLOCK points (per thread) and the forwards prefetch PREFETCH_AHEAD points ahead: full blocks,
    a partial last block and points within the last PREFETCH_AHEAD of a block all match the reference,
    on dense and hashed levels."""
    per_thread = 2 * cpu.STAGE_BLOCK + cpu.PREFETCH_AHEAD // 2 + 3
    layout = GridLayout.create(d, 6, n_features, 10 if d == 3 else 8, 4, 1.8)
    assert any(layout.hashed) and not all(layout.hashed)
    x = sample_points(2 * per_thread + 1, d, torch.float64, seed=5)
    table = torch.randn(layout.n_rows, n_features, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    (out, gt, _), (out_r, gt_r, _) = run_both(x, table, layout, interpolation)
    assert_close(out, out_r, rtol=1e-12, atol_scale=1e-12)
    assert_close(gt, gt_r, rtol=1e-12, atol_scale=1e-12)


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("n_features", [2, 3])
def test_forward_across_groups_of_points(d, n_features):
    """The forwards write each group of GROUP_POINTS points level by level: a thread's share of several
    groups with a partial last one (two threads, when Numba has them) matches the reference, and the
    bfloat16 output is its rounding."""
    layout = GridLayout.create(d, 5, n_features, 10 if d == 3 else 8, 4, 1.8)
    x = sample_points(2 * (cpu.GROUP_POINTS + 1500) + 1, d, torch.float64, seed=7)
    table = torch.randn(layout.n_rows, n_features, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    out = cpu.forward(x, table, layout, ref.INTERPOLATIONS["Linear"])
    assert_close(out, ref.hash_grid_encode(x, table, layout, "Linear"), rtol=1e-12, atol_scale=1e-12)
    x32, table32 = x.float(), table.float()
    rounded = cpu.forward(x32, table32, layout, ref.INTERPOLATIONS["Linear"], out_dtype=torch.bfloat16)
    assert_rounded_to_bfloat16(rounded, cpu.forward(x32, table32, layout, ref.INTERPOLATIONS["Linear"]), table32)


@pytest.mark.parametrize("d", [1, 3])
def test_nan_and_inf_coordinates_stay_in_bounds(d):
    """NaN checks belong to the module layer; the kernels must still never index out of bounds, and
    the other points' features must not be affected."""
    layout = make_layout(d, "mixed")
    x = sample_points(64, d, torch.float64)
    x[0, 0], x[1, -1], x[2, 0] = float("nan"), float("inf"), float("-inf")
    table = torch.randn(layout.n_rows, 2, dtype=torch.float64)
    out = hash_grid_encode(x, table, layout)
    assert_close(out[3:], ref.hash_grid_encode(x[3:], table, layout), rtol=1e-12, atol_scale=1e-12)
    assert_close(out[1:3], ref.hash_grid_encode(x[1:3], table, layout), rtol=1e-12, atol_scale=1e-12)


def test_level_schedule_assigns_every_level_once():
    layout = GridLayout.create(3, 16, 2, 19, 16, 1.38)
    meta = cpu.level_table(layout.resolutions, layout.offsets, layout.hashed)
    for workers in (1, 2, 3, 20):
        schedule = cpu.level_schedule(meta, 8, workers)
        levels = schedule[schedule >= 0]
        assert schedule.shape[0] == workers
        assert np.array_equal(np.sort(levels), np.arange(16))


# ----------------------------------------------------------------------------------------------------
# Features rounded to bfloat16 as they are written (rendering)
# ----------------------------------------------------------------------------------------------------


def test_bfloat16_bits_round_as_torch():
    """The kernels' float32 -> bfloat16 rounding is torch's: ties to even (both directions), carries into
    the exponent, denormals kept, infinities and the largest finite values; NaN stays NaN."""
    ties = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F80C000, 0x3F807FFF, 0x3FFF8000, 0x7F7F8000,
                     0x7F7FFFFF, 0x00008000, 0x00018000, 0x807FFFFF], dtype=np.uint32).view(np.float32)
    values = np.concatenate([ties, np.float32([0.0, -0.0, np.inf, -np.inf, 1e-45, 1.17e-38, 3.4e38]),
                             np.random.default_rng(0).standard_normal(20000).astype(np.float32) *
                             np.float32(10.0) ** np.random.default_rng(1).integers(-40, 38, 20000).astype(np.float32)])
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    actual = np.array([cpu.bfloat16_bits(v) for v in values], dtype=np.uint16)
    np.testing.assert_array_equal(actual, expected)
    nan = cpu.bfloat16_bits(np.float32(np.nan))
    assert torch.tensor([nan], dtype=torch.int16).view(torch.bfloat16).isnan().all()


def assert_rounded_to_bfloat16(rounded, features, table):
    """``rounded`` (the kernel writing bfloat16) is ``features`` (the kernel writing float32) rounded as
    torch rounds, ties to even, except where a feature lies so near the midpoint of two bfloat16 values
    that the float32 sums themselves may differ: the kernels are compiled with fastmath, and LLVM may
    contract and order a point's corner products differently in the two specialisations, by CPU (on an
    AMD Zen 4, 2 of 194k 2-D features: one bfloat16 apart, 3.7e-9 and 1.9e-9 from the midpoint; none on
    an Intel Xeon). Such a feature may take the other neighbour; a rounding error (truncation, a wrong
    tie) shows up far from midpoints."""
    expected = features.to(torch.bfloat16)
    differ = rounded != expected
    if not differ.any():
        return
    # one bfloat16 apart (adjacent bit patterns of the same sign) ...
    apart = (rounded[differ].view(torch.int16).int() - expected[differ].view(torch.int16).int()).abs()
    assert (apart == 1).all(), f"{int((apart != 1).sum())} features more than one bfloat16 from the rounding"
    # ... and the float32 feature within a few float32 roundings (of the largest table entry) of their midpoint
    midpoint = (rounded[differ].double() + expected[differ].double()) / 2
    slack = 16 * torch.finfo(torch.float32).eps * float(table.abs().max())
    off = (features[differ].double() - midpoint).abs()
    assert (off <= slack).all(), (f"{int((off > slack).sum())} of {int(differ.sum())} features rounded to the "
                                  f"wrong bfloat16, up to {float(off.max()):.3g} from the midpoint")


@pytest.mark.parametrize("d, kind", [(2, "mixed"), (3, "mixed"), (3, "hashed"), (4, "mixed"), (1, "dense")])
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("n_features", [2, 3])
def test_forward_rounded_to_bfloat16_in_the_kernel(d, kind, interpolation, n_features):
    """forward(..., out_dtype=bfloat16) (the 2-D, 3-D and n-D kernels) holds exactly the float32 features
    rounded by torch, across staging blocks; hash_grid_encode_as is that, detached, on every backend."""
    layout = make_layout(d, kind, n_features)
    x = sample_points(2 * cpu.STAGE_BLOCK + 77, d, torch.float32, seed=3)
    table = torch.randn(layout.n_rows, n_features, generator=torch.Generator().manual_seed(4)) * 1e-2
    interp = ref.INTERPOLATIONS[interpolation]
    features = cpu.forward(x, table, layout, interp)
    rounded = cpu.forward(x, table, layout, interp, out_dtype=torch.bfloat16)
    assert rounded.dtype == torch.bfloat16
    assert_rounded_to_bfloat16(rounded, features, table)
    assert not torch.equal(rounded.float(), features)  # the rounding happened
    table.requires_grad_()
    encoded = hash_grid_encode_as(x, table, layout, torch.bfloat16, interpolation)
    assert torch.equal(encoded, rounded) and not encoded.requires_grad
    assert torch.equal(hash_grid_encode_as(x, table, layout, torch.float16, interpolation),
                       features.to(torch.float16))  # other dtypes: the float32 result converted


def test_forward_rounded_on_the_reference_backend(monkeypatch):
    monkeypatch.setenv("NGP_BACKEND", "reference")
    layout = make_layout(3, "mixed")
    x = sample_points(300, 3, torch.float32)
    table = torch.randn(layout.n_rows, 2, requires_grad=True)
    encoded = hash_grid_encode_as(x, table, layout, torch.bfloat16)
    assert torch.equal(encoded, ref.hash_grid_encode(x, table, layout).detach().to(torch.bfloat16))
    assert not encoded.requires_grad


def test_forward_rejects_an_output_dtype_it_cannot_write():
    layout = make_layout(3, "mixed")
    with pytest.raises(TypeError, match="floating-point"):
        hash_grid_encode_as(sample_points(10, 3, torch.float32), torch.zeros(layout.n_rows, 2), layout, torch.int32)
    with pytest.raises(TypeError, match="float16"):
        cpu.forward(sample_points(10, 3, torch.float32), torch.zeros(layout.n_rows, 2), layout, 1,
                    out_dtype=torch.float16)


@pytest.mark.parametrize("d", [2, 3])
def test_corner_rows_staged_in_32_bits_give_the_64_bit_results(d, monkeypatch):
    """The fast paths stage corner rows as uint32 while every row index fits (the hash arithmetic keeps
    its low 32 bits); tables with more rows stage them as int64. Both give the same features and table
    gradients bit for bit, and the choice follows the row count."""
    layout = GridLayout.create(d, 8, 2, 17, 16, 2.0)  # more than 2^16 rows: 16 bits would not do
    assert layout.n_rows > 1 << 16 and any(layout.hashed) and not all(layout.hashed)
    table = torch.randn(layout.n_rows, 2, generator=torch.Generator().manual_seed(4))
    x = sample_points(3000, d, torch.float32, seed=5)
    grad_out = torch.randn(x.shape[0], layout.n_output_dims, generator=torch.Generator().manual_seed(6))
    results = {}
    for kind in (np.uint32, np.int64):
        monkeypatch.setattr(cpu, "_row_type", lambda t, _kind=kind: np.empty(0, _kind))
        out = cpu.forward(x, table, layout, ref.INTERPOLATIONS["Linear"])
        grad_table, _ = cpu.backward(grad_out, x, table, layout, ref.INTERPOLATIONS["Linear"], True, False)
        results[kind] = (out, grad_table)
    monkeypatch.undo()
    assert torch.equal(results[np.uint32][0], results[np.int64][0])
    assert torch.equal(results[np.uint32][1], results[np.int64][1])
    assert cpu._row_type(table.numpy()).dtype == np.uint32
    huge = np.lib.stride_tricks.as_strided(np.zeros(2, np.float32), shape=((1 << 32) + 1, 2), strides=(0, 4))
    assert cpu._row_type(huge).dtype == np.int64


@pytest.mark.parametrize("n_points", [5, 9000])  # one thread; several threads and a part block
def test_level_major_gradients_reorder_and_widen_exactly(n_points):
    """The backward kernels read ``grad_out [N, L*F]`` reordered to ``[L, N, F]``; bfloat16 gradients
    (NeRF training's, from its bfloat16 features) are widened to float32 in the same pass: every bit
    pattern as torch's conversion gives it, NaNs and infinities included."""
    from ngp.kernels.cpu.hashgrid import _level_major_grads

    n_levels, n_features = 16, 2
    meta = np.zeros((n_levels, 8), dtype=np.int64)
    g = torch.Generator().manual_seed(3)
    bits = torch.randint(-32768, 32768, (n_points, n_levels * n_features), generator=g, dtype=torch.int32)
    bits.view(-1)[:8] = torch.tensor([0x7F80, -128, 0x7FC0, -64, 0, -32768, 1, 0x0080])  # inf, -inf, NaNs, +-0, tiny
    grad16 = bits.to(torch.int16).view(torch.bfloat16)
    want = grad16.float().view(n_points, n_levels, n_features).transpose(0, 1).contiguous()
    got = _level_major_grads(grad16.view(torch.int16).numpy().view(np.uint16), meta, n_features, np.float32)
    assert got.dtype == np.float32
    assert torch.equal(torch.from_numpy(got).view(torch.int32), want.view(torch.int32))  # bit for bit
    grad32 = torch.randn(n_points, n_levels * n_features, generator=g)
    got32 = _level_major_grads(grad32.numpy(), meta, n_features)
    assert torch.equal(torch.from_numpy(got32), grad32.view(n_points, n_levels, n_features).transpose(0, 1))
