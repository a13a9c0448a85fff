"""Triton hash-grid kernels against the plain-PyTorch reference.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``) on small CPU inputs
(tens of points, a few levels: the interpreter executes every block operation in NumPy). The variable
is set by a module-scoped fixture and restored afterwards; :func:`ngp.kernels.triton.kernels_for_mode`
makes that work even when another test module imported the kernels earlier (Triton reads the variable
when a kernel is decorated, not when it runs). Tests that need a real GPU skip without one.

Run: ``pytest tests/test_triton_kernels.py`` (needs ``pip install 'ngp[gpu]'``, i.e. triton).
"""

from __future__ import annotations


import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install 'ngp[gpu]'); Triton kernels untested")

from ngp.kernels.reference import hashgrid as reference  # noqa: E402
from ngp.kernels.reference.hashgrid import INTERPOLATIONS, GridLayout  # noqa: E402
from ngp.kernels.triton import hashgrid as tk  # noqa: E402
from ngp.kernels.triton import interpreting, kernels_for_mode  # noqa: E402

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")


pytestmark = pytest.mark.usefixtures("triton_interpreter")  # tests/conftest.py


def make_case(d, *, hashed=True, n_levels=4, n_features=2, n_points=40, seed=0, dtype=torch.float32,
              table_dtype=torch.float32, device="cpu"):
    """A small layout with dense *and* hashed levels (when ``hashed``), points incl. edge cases."""
    log2_size = {1: 4, 2: 5, 3: 7, 4: 8}[d]
    layout = GridLayout.create(d, n_levels, n_features, log2_size, base_resolution=3, per_level_scale=2.0,
                               hash=hashed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_points, d, generator=g, dtype=torch.float64)
    x[0], x[1] = 0.0, 1.0  # the corners of the domain (x = 1 lies in the last cell)
    x[2] = torch.linspace(-0.2, 1.3, d, dtype=torch.float64)  # partly outside: clamped, zero gradient
    x[3] = x[4]  # two points in the same cell: colliding atomic adds
    table = (torch.rand(layout.n_rows, n_features, generator=g, dtype=torch.float64) * 2 - 1).to(table_dtype)
    grad_out = torch.randn(n_points, layout.n_output_dims, generator=g, dtype=torch.float64)
    return layout, x.to(dtype).to(device), table.to(device), grad_out.to(device)


def reference_results(layout, x, table, grad_out, interpolation):
    """Reference forward and gradients on the stored (possibly float16) table values in float64.

    Positions ``x * N_l`` are rounded in ``x``'s dtype, as the kernels do, so that at fine levels both
    pick the same cells and fractions.
    """
    xr = x.cpu().clone().requires_grad_()
    t64 = table.double().cpu().requires_grad_()
    out = reference.hash_grid_encode(xr, t64, layout, interpolation)
    gx, gt = torch.autograd.grad(out, (xr, t64), grad_out.double().cpu(), allow_unused=True)
    gx = torch.zeros_like(xr) if gx is None else gx  # Nearest: no path from x to the output
    return out.detach(), gx, gt


def triton_results(layout, x, table, grad_out, interpolation, out_dtype=None):
    meta = tk.level_table(layout.resolutions, layout.offsets, layout.hashed)
    scales = torch.tensor(layout.resolutions, dtype=tk.compute_dtype(x, table))
    code = INTERPOLATIONS[interpolation]
    out = torch.empty(x.shape[0], layout.n_output_dims, dtype=out_dtype or table.dtype, device=x.device)
    tk.encode(x, table, meta, scales, code, out)
    grad_table = torch.full(table.shape, 7.0, dtype=tk.compute_dtype(x, table), device=x.device)  # overwritten
    tk.table_grad(x, grad_out.to(out.dtype), meta, scales, code, grad_table)
    grad_x = torch.full_like(x, 7.0)
    tk.input_grad(x, table, grad_out.to(out.dtype), meta, scales, code, grad_x)
    return out, grad_x, grad_table


def assert_matches(layout, x, table, grad_out, interpolation, tol, out_dtype=None):
    ref_out, ref_gx, ref_gt = reference_results(layout, x, table, grad_out, interpolation)
    out, gx, gt = triton_results(layout, x, table, grad_out, interpolation, out_dtype)
    torch.testing.assert_close(out.double().cpu(), ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(gt.double().cpu(), ref_gt, rtol=tol, atol=tol)
    # d(out)/dx scales with the finest resolution: compare relative to the gradient's size.
    scale = ref_gx.double().abs().max().clamp_min(1.0)
    torch.testing.assert_close(gx.double().cpu() / scale, ref_gx.double() / scale, rtol=tol, atol=tol)
    assert gt.abs().sum() > 0 and out.abs().sum() > 0  # the comparison compared something


# ----------------------------------------------------------------------------------------------------
# Interpreter: kernels vs reference
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_linear_dense_and_hashed_levels_match_reference(d):
    layout, x, table, grad_out = make_case(d)
    assert any(layout.hashed) and not all(layout.hashed)  # both kinds of level are exercised
    assert_matches(layout, x, table, grad_out, "Linear", tol=1e-5)


@pytest.mark.parametrize("d,interpolation", [(2, "Smoothstep"), (3, "Smoothstep"), (2, "Nearest"), (3, "Nearest")])
def test_other_interpolations_match_reference(d, interpolation):
    layout, x, table, grad_out = make_case(d, seed=d)
    assert_matches(layout, x, table, grad_out, interpolation, tol=1e-5)


@pytest.mark.parametrize("d", [2, 3])
def test_dense_grid_matches_reference(d):
    layout, x, table, grad_out = make_case(d, hashed=False, n_levels=3)
    assert not any(layout.hashed)
    assert_matches(layout, x, table, grad_out, "Linear", tol=1e-5)


@pytest.mark.parametrize("n_features", [1, 4, 8])
def test_feature_counts_match_reference(n_features):
    layout, x, table, grad_out = make_case(3, n_features=n_features, n_levels=2)
    assert_matches(layout, x, table, grad_out, "Linear", tol=1e-5)


def test_float64_is_exact_to_rounding():
    layout, x, table, grad_out = make_case(3, dtype=torch.float64, table_dtype=torch.float64)
    assert_matches(layout, x, table, grad_out, "Linear", tol=1e-12)


@pytest.mark.parametrize("d,out_dtype", [(2, torch.float16), (3, torch.float32)])
def test_float16_table_storage(d, out_dtype):
    # float16 values, float32 positions and sums, float32 gradient buffer: only the output rounds.
    layout, x, table, grad_out = make_case(d, table_dtype=torch.float16)
    assert_matches(layout, x, table, grad_out, "Linear", tol=2e-3 if out_dtype == torch.float16 else 1e-5,
                   out_dtype=out_dtype)


def test_hash_uses_32_bit_wrapping_products():
    # A fine 3-D level: c * 2654435761 overflows 32 bits for every c >= 2, so a kernel without the
    # uint32 wrap (or with a signed product) would pick other rows than the reference.
    layout = GridLayout.create(3, 1, 2, 10, base_resolution=1000, per_level_scale=2.0)
    assert layout.hashed == (True,)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(30, 3, generator=g)
    table = torch.randn(layout.n_rows, 2, generator=g)
    grad_out = torch.randn(30, 2, generator=g, dtype=torch.float64)
    assert_matches(layout, x, table, grad_out, "Linear", tol=1e-5)


@pytest.mark.parametrize("table_dtype", [torch.float32, torch.float16])
def test_op_interface_forward_and_backward(table_dtype):
    """``forward``/``backward`` as ``ngp.ops.hashgrid`` calls them: the table in its storage dtype,
    features in x's dtype, the table gradient in the float32 accumulator (the master's gradient)."""
    layout, x, table, grad_out = make_case(3, seed=5, table_dtype=table_dtype)
    code = INTERPOLATIONS["Linear"]
    out = tk.forward(x, table, layout, code)
    grad_table, grad_x = tk.backward(grad_out.float(), x, table, layout, code, True, True)
    assert out.dtype == grad_table.dtype == grad_x.dtype == x.dtype == torch.float32
    ref_out, ref_gx, ref_gt = reference_results(layout, x, table, grad_out.float(), "Linear")
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)  # no output rounding
    torch.testing.assert_close(grad_table.double(), ref_gt, rtol=1e-5, atol=1e-5)
    scale = ref_gx.double().abs().max()
    torch.testing.assert_close(grad_x.double() / scale, ref_gx.double() / scale, rtol=1e-5, atol=1e-5)
    assert tk.backward(grad_out.float(), x, table, layout, code, False, False) == (None, None)
    # Without the x-gradient the op passes the float32 master (only its shape is read).
    grad_master, _ = tk.backward(grad_out.float(), x, table.float(), layout, code, True, False)
    assert grad_master.dtype == torch.float32 and torch.equal(grad_master, grad_table)


def test_float64_interface_stays_float64():
    layout, x, table, grad_out = make_case(2, dtype=torch.float64, table_dtype=torch.float64)
    code = INTERPOLATIONS["Linear"]
    grad_table, grad_x = tk.backward(grad_out, x, table, layout, code, True, True)
    assert tk.forward(x, table, layout, code).dtype == grad_table.dtype == grad_x.dtype == torch.float64


def test_empty_batch_is_a_no_op():
    layout, _, table, _ = make_case(2)
    x = torch.zeros(0, 2)
    out, gx, gt = triton_results(layout, x, table, torch.zeros(0, layout.n_output_dims), "Linear")
    assert out.shape == (0, layout.n_output_dims) and gx.shape == (0, 2) and not gt.any()


# ----------------------------------------------------------------------------------------------------
# Errors and modes
# ----------------------------------------------------------------------------------------------------


def test_cpu_tensors_without_interpreter_raise_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    layout, x, table, _ = make_case(2, n_points=8)
    meta = tk.level_table(layout.resolutions, layout.offsets, layout.hashed)
    out = torch.empty(8, layout.n_output_dims)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        tk.encode(x, table, meta, torch.tensor(layout.resolutions, dtype=torch.float32), 1, out)


def test_float16_gradient_buffer_is_refused():
    layout, x, table, grad_out = make_case(2, n_points=8, table_dtype=torch.float16)
    meta = tk.level_table(layout.resolutions, layout.offsets, layout.hashed)
    with pytest.raises(ValueError, match="float32"):
        tk.table_grad(x, grad_out.half(), meta, torch.tensor(layout.resolutions, dtype=torch.float32), 1,
                      torch.zeros_like(table))


def test_meta_columns_match_the_numba_module():
    cpu = pytest.importorskip("ngp.kernels.cpu.hashgrid", reason="Numba kernels not importable")
    layout = GridLayout.create(3, 8, 2, 12, 4, 1.6)
    args = (layout.resolutions, layout.offsets, layout.hashed)
    assert (tk.level_table(*args) == cpu.level_table(*args)).all()
    assert (tk.RES, tk.OFFSET, tk.SIZE, tk.HASHED, tk.MASK, tk.STRIDE1) == (
        cpu.RES, cpu.OFFSET, cpu.SIZE, cpu.HASHED, cpu.MASK, cpu.STRIDE1)


def test_kernels_follow_the_interpreter_setting_at_call_time(monkeypatch):
    assert interpreting() and kernels_for_mode(tk.__name__).INTERPRETED
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not interpreting() and not kernels_for_mode(tk.__name__).INTERPRETED


@pytest.mark.parametrize("table_ty", ["*fp16", "*fp32"])
def test_kernels_compile_for_an_h100_without_a_gpu(monkeypatch, table_ty):
    """The interpreter accepts things the compiler rejects: compile the real kernels to sm_90 cubin
    (Triton ships ptxas; no GPU or driver needed), for the paper's configuration, with the table
    stored in float16 and in float32 (features and gradients in float32, as the op passes them)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    import triton

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:  # pragma: no cover - depends on the Triton version
        pytest.skip(f"this Triton has no offline compile API: {exc}")
    compiled = kernels_for_mode(tk.__name__)
    # the default hash (and its primes), 2^T tables
    const = {"D": 3, "F": 2, "INTERP": 1, "BLOCK": 128,
             **tk._hash_constexprs(torch.zeros(1, 8, dtype=torch.int64), 0, True)}
    common = {"meta_ptr": "*i64", "scales_ptr": "*fp32", "n_points": "i32", "out_stride": "i32"}
    signatures = {
        "_forward_kernel": {"x_ptr": "*fp32", "table_ptr": table_ty, "out_ptr": "*fp32"},
        "_backward_table_kernel": {"x_ptr": "*fp32", "grad_out_ptr": "*fp32", "grad_table_ptr": "*fp32"},
        "_backward_x_kernel": {"x_ptr": "*fp32", "table_ptr": table_ty, "grad_out_ptr": "*fp32",
                               "grad_x_ptr": "*fp32", "n_levels": "i32"},
    }
    for name, sig in signatures.items():
        fn = getattr(compiled, name)
        full = {arg: {**common, **sig}.get(arg, "constexpr") for arg in fn.arg_names}
        kernel = triton.compile(ASTSource(fn=fn, signature=full, constexprs=const), target=GPUTarget("cuda", 90, 32),
                                options={"enable_fp_fusion": False})
        assert len(kernel.asm["cubin"]) > 0, name
        if name == "_backward_table_kernel":
            assert "red.global" in kernel.asm["ptx"] or "atom.global" in kernel.asm["ptx"]
        elif table_ty == "*fp16":  # the gathers read 16-bit values (half the bytes), converted to float32
            assert "ld.global.b16" in kernel.asm["ptx"] or "ld.global.u16" in kernel.asm["ptx"], name


# ----------------------------------------------------------------------------------------------------
# Real GPU (skipped without one)
# ----------------------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("table_dtype", [torch.float32, torch.float16])
def test_cuda_kernels_match_reference_on_the_paper_configuration(monkeypatch, table_dtype):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    layout = GridLayout.create(3, 16, 2, 19, 16, (2048 / 16) ** (1 / 15))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4096, 3, generator=g).cuda()
    table = ((torch.rand(layout.n_rows, 2, generator=g) * 2 - 1) * 1e-1).to(table_dtype).cuda()
    grad_out = torch.randn(4096, layout.n_output_dims, generator=g, dtype=torch.float64).cuda()
    tol = 2e-3 if table_dtype == torch.float16 else 1e-5
    assert_matches(layout, x, table, grad_out, "Linear", tol=tol, out_dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------
# Through the op and the module: NGP_BACKEND=triton sends CPU tensors to these kernels (interpreter)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", [None, "float16"])
def test_hash_grid_module_dispatches_to_triton(monkeypatch, storage):
    import ngp

    calls = []  # a module that stops dispatching to these kernels leaves this empty: the test fails
    for name in ("encode", "table_grad", "input_grad"):
        original = getattr(tk, name)
        monkeypatch.setattr(tk, name, lambda *a, _f=original, _n=name, **k: (calls.append((_n, a[1].dtype)),
                                                                               _f(*a, **k))[1])
    config = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 7,
              "base_resolution": 3, "per_level_scale": 2.0, "storage_dtype": storage}
    torch.manual_seed(0)
    encoding = ngp.Encoding(3, config)
    with torch.no_grad():
        encoding.table.uniform_(-1, 1)
    x = torch.rand(30, 3)

    def run(backend):
        monkeypatch.setenv("NGP_BACKEND", backend)
        encoding.zero_grad()
        xg = x.clone().requires_grad_()
        out = encoding(xg)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        return out.detach(), xg.grad, encoding.table.grad.clone()

    expected, got = run("reference"), run("triton")
    stored = torch.float16 if storage else torch.float32
    # encode and input_grad gather from the stored copy; table_grad's second argument is grad_out
    assert {("encode", stored), ("table_grad", torch.float32), ("input_grad", stored)} <= set(calls)
    assert got[2].dtype == encoding.table.dtype == torch.float32
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d,interpolation", [(2, "Linear"), (3, "Smoothstep")])
def test_op_with_float16_storage_matches_the_reference_op(monkeypatch, d, interpolation):
    """``hash_grid_encode(..., storage_dtype=float16)``: Triton vs the reference backend (the
    straight-through definition), forward and both gradients; float32 results for a float32 master."""
    from ngp.ops.hashgrid import hash_grid_encode

    layout, x, table, grad_out = make_case(d, seed=11)
    table = table.float()  # the float32 master; most of its values are not representable in float16
    assert (table.half().float() != table).float().mean() > 0.99

    def run(backend, **kwargs):
        monkeypatch.setenv("NGP_BACKEND", backend)
        xi, ti = x.clone().requires_grad_(), table.clone().requires_grad_()
        out = hash_grid_encode(xi, ti, layout, interpolation, **kwargs)
        gx, gt = torch.autograd.grad(out, (xi, ti), grad_out.float())
        return out.detach(), gx, gt

    expected = run("reference", storage_dtype=torch.float16)
    got = run("triton", storage_dtype=torch.float16)
    assert all(t.dtype == torch.float32 for t in got)
    for e, g in zip(expected, got):
        scale = e.abs().max().clamp_min(1.0)
        torch.testing.assert_close(g / scale, e / scale, rtol=1e-5, atol=1e-5)
    unrounded = run("triton")
    assert (got[0] - unrounded[0]).abs().max() > 1e-5  # the storage option changed the values read
    torch.testing.assert_close(got[2], unrounded[2], rtol=1e-6, atol=1e-7)  # straight-through gradient
