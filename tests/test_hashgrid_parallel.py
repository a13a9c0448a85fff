"""The multithreaded branch of the Numba hash-grid kernels against the reference.

Every other kernel test uses fewer points than ``PARALLEL_MIN_POINTS``, so it runs the kernels on the
calling thread only. Here 2^16 points go through the op with two Numba threads, and the test checks
that the parallel branch really ran (the compiled kernels are spied on: two chunks of points, two
workers owning levels), then compares forward, table gradient and input gradient

* with the float64 reference (the truth: the same float32 inputs, widened exactly), within a few
  float32 rounding errors of each element's own scale, and
* with the same op on one thread, bit for bit: a point's features and input gradient are computed
  by one thread with the same code whatever the chunking, and each level's table gradient is summed
  by its one owner in point order, so the thread count must not change a single bit.
"""

from __future__ import annotations

import numba
import pytest
import torch

from ngp.kernels.cpu import hashgrid as cpu
from ngp.kernels.reference import hashgrid as ref
from ngp.kernels.reference.hashgrid import GridLayout
from ngp.ops.hashgrid import hash_grid_encode

N_POINTS = 1 << 16
N_THREADS = 2
U32 = 2.0**-24  # float32 unit roundoff

# Error bound factor, in units of U32 times each element's scale (see _scales). Measured: at most
# 5 for this kernel and also for the float32 reference (whose sums run in another order). The table
# gradient sums up to ~10^4 terms per row of the coarse levels: recursive summation errors of random
# sign grow like sqrt(k) U32 S, ~100 U32 S for k = 10^4 at worst in practice; 64 leaves margin over
# what both implementations show and is still ~10^-4 of a single term's weight, far below what a
# lost or doubled contribution (a race, a skipped chunk) would change.
ROUNDING_FACTOR = 64


@pytest.fixture
def two_threads(monkeypatch):
    """Numba with two threads (restored afterwards) and the op on the Numba kernels."""
    if numba.config.NUMBA_NUM_THREADS < N_THREADS:
        pytest.skip(f"Numba was started with {numba.config.NUMBA_NUM_THREADS} thread(s) "
                    f"(NUMBA_NUM_THREADS); the parallel branch needs {N_THREADS}")
    monkeypatch.setenv("NGP_BACKEND", "numba")
    previous = numba.get_num_threads()
    numba.set_num_threads(N_THREADS)
    yield
    numba.set_num_threads(previous)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Spy on the compiled 2-D/3-D kernels: ``(name, Numba threads at the call, chunks or workers)``."""
    calls = []
    for name in ("_forward_2d", "_forward_3d", "_backward_x_2d", "_backward_x_3d"):
        kernel = getattr(cpu, name)

        def spy(*args, _kernel=kernel, _name=name):
            calls.append((_name, numba.get_num_threads(), args[-1]))  # last argument: n_chunks
            return _kernel(*args)

        monkeypatch.setattr(cpu, name, spy)
    for name in ("_backward_table_2d", "_backward_table_3d"):
        kernel = getattr(cpu, name)

        def spy(x, grads, meta, scales, interp, schedule, *tables, _kernel=kernel, _name=name):
            busy = int((schedule >= 0).any(axis=1).sum())  # workers that own at least one level
            calls.append((_name, numba.get_num_threads(), busy))
            return _kernel(x, grads, meta, scales, interp, schedule, *tables)

        monkeypatch.setattr(cpu, name, spy)
    return calls


def make_case(d: int):
    """A layout with dense coarse and hashed fine levels, 2^16 points (some outside [0, 1])."""
    # Power-of-two resolutions: x * N_l is exact in float32, so the float64 truth sees the same cells.
    layout = GridLayout.create(d, 6, 2, {2: 10, 3: 12}[d], 4, 2.0)
    assert any(layout.hashed) and not all(layout.hashed)
    g = torch.Generator().manual_seed(d)
    x = torch.rand(N_POINTS, d, generator=g)
    x[: N_POINTS // 16] = x[: N_POINTS // 16] * 1.6 - 0.3  # clamped: no input gradient there
    table = torch.rand(layout.n_rows, 2, generator=g) * 2 - 1
    grad_out = torch.randn(N_POINTS, layout.n_output_dims, generator=g)
    return layout, x, table, grad_out


def encode_with_grads(encode, x, table, layout, grad_out, **kwargs):
    """``(features, table gradient, input gradient)`` of ``encode`` (Linear interpolation)."""
    xi, ti = x.clone().requires_grad_(), table.clone().requires_grad_()
    out = encode(xi, ti, layout, "Linear", **kwargs)
    grad_x, grad_table = torch.autograd.grad(out, (xi, ti), grad_out)
    return out.detach(), grad_table, grad_x


def _scales(x, table, layout, grad_out, truth):
    """Each element's magnitude of rounding: the sum of the absolute values of the terms it adds up.

    Features: ``sum_c w_c |t_c|``; table gradient: ``sum_n w |g_n|`` (Linear weights are >= 0, so the
    reference applied to absolute values gives these sums). Input gradient: its largest magnitude
    (its terms, differences of table values times ``N_l``, have no such closed form here).
    """
    features = ref.hash_grid_encode(x, table.abs(), layout)
    table_grad = encode_with_grads(ref.hash_grid_encode, x, table, layout, grad_out.abs())[1]
    return features, table_grad, truth[2].abs().max().expand_as(truth[2])


@pytest.mark.parametrize("storage", [None, torch.float16], ids=["float32", "float16-storage"])
@pytest.mark.parametrize("d", [2, 3])
def test_parallel_kernels_match_the_reference(two_threads, kernel_calls, d, storage):
    layout, x, table, grad_out = make_case(d)
    assert N_POINTS >= cpu.PARALLEL_MIN_POINTS  # the op takes the multithreaded branch...
    got = encode_with_grads(hash_grid_encode, x, table, layout, grad_out, storage_dtype=storage)
    # ...and did: every kernel ran with two threads, the points in two chunks, levels on two workers.
    assert numba.get_num_threads() == N_THREADS
    names = {f"_forward_{d}d", f"_backward_table_{d}d", f"_backward_x_{d}d"}
    assert {name for name, _, _ in kernel_calls} == names
    assert all((threads, parts) == (N_THREADS, N_THREADS) for _, threads, parts in kernel_calls), kernel_calls
    assert all(t.dtype == torch.float32 for t in got)

    # The definition of float16 storage: the reference on the rounded table (straight-through gradient).
    stored = table.to(storage or table.dtype).double()
    args = (x.double(), stored, layout, grad_out.double())
    truth = encode_with_grads(ref.hash_grid_encode, *args)
    for name, value, exact, scale in zip(("features", "table gradient", "input gradient"), got, truth,
                                         _scales(*args[:3], grad_out.double(), truth)):
        error = (value.double() - exact).abs()
        bound = ROUNDING_FACTOR * U32 * scale
        worst = int((error - bound).argmax())
        within = bool((error <= bound).all())
        assert within, (f"{name}: |numba - reference| = {error.view(-1)[worst]:.3g} > "
                        f"{bound.reshape(-1)[worst]:.3g} at flat index {worst}")
    assert (got[2][: N_POINTS // 16][(x[: N_POINTS // 16] < 0) | (x[: N_POINTS // 16] > 1)] == 0).all()

    numba.set_num_threads(1)
    first = len(kernel_calls)
    single = encode_with_grads(hash_grid_encode, x, table, layout, grad_out, storage_dtype=storage)
    assert [call[1:] for call in kernel_calls[first:]] == [(1, 1)] * 3  # that run was single-threaded
    for name, a, b in zip(("features", "table gradient", "input gradient"), got, single):
        assert torch.equal(a, b), f"{name}: two threads differ from one"
