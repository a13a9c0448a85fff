"""float16 table storage with a float32 master parameter (``storage_dtype``), on the CPU backends.

The specification: the encoding of ``table.to(storage).to(table.dtype)`` (values rounded), features in
the table's dtype, the table gradient straight-through (that of the rounded copy, float32, never
rounded to float16). The Triton kernels are checked against the same definition in
``tests/test_triton_kernels.py``.
"""

from __future__ import annotations

import pytest
import torch

import ngp
from ngp.encodings import HashGrid
from ngp.io.checkpoints import load_checkpoint, save_checkpoint
from ngp.kernels.reference import hashgrid as ref
from ngp.kernels.reference.hashgrid import GridLayout
from ngp.ops import hashgrid as op_module
from ngp.ops.hashgrid import hash_grid_encode

BACKENDS = ["reference", "numba"]
CONFIG = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 7,
          "base_resolution": 3, "per_level_scale": 2.0}


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("NGP_BACKEND", request.param)
    return request.param


def make_case(d=3, n_points=200, seed=0, dtype=torch.float32):
    """Dense and hashed levels; a table whose values are (almost all) not representable in float16."""
    layout = GridLayout.create(d, 4, 2, {2: 5, 3: 7}[d], 3, 2.0)
    assert any(layout.hashed) and not all(layout.hashed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_points, d, generator=g, dtype=dtype)
    table = torch.rand(layout.n_rows, 2, generator=g, dtype=dtype) * 2 - 1
    assert (table.half().to(dtype) != table).float().mean() > 0.99
    grad_out = torch.randn(n_points, layout.n_output_dims, generator=g, dtype=dtype)
    return layout, x, table, grad_out


def encode_and_grads(encode, x, table, grad_out, **kwargs):
    """``(features, d/dx, d/dtable)`` of ``<encode(x, table), grad_out>``."""
    xi, ti = x.clone().requires_grad_(), table.clone().requires_grad_()
    out = encode(xi, ti, **kwargs)
    gx, gt = torch.autograd.grad(out, (xi, ti), grad_out)
    return out.detach(), gx, gt


def close(actual, expected, tol):
    """Closeness with the absolute tolerance relative to the largest expected value."""
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(1.0, expected.abs().max().item()))


# ----------------------------------------------------------------------------------------------------
# The op
# ----------------------------------------------------------------------------------------------------


def test_float16_storage_is_the_encoding_of_the_rounded_table(backend):
    layout, x, table, grad_out = make_case()
    out, gx, gt = encode_and_grads(hash_grid_encode, x, table, grad_out, layout=layout, storage_dtype=torch.float16)
    rounded = table.half().float()
    out_r, gx_r, gt_r = encode_and_grads(ref.hash_grid_encode, x, rounded, grad_out, layout=layout)
    assert out.dtype == gx.dtype == gt.dtype == torch.float32
    tol = 1e-6 if backend == "reference" else 1e-5
    close(out, out_r, tol)
    close(gx, gx_r, tol * 10)  # d/dx scales with the finest resolution
    close(gt, gt_r, tol)


def test_float16_storage_changes_the_output_not_the_table_gradient(backend):
    """The option does something (the values are rounded), and the table gradient is the float32
    one: it does not depend on the table's values, so it equals float32 storage's."""
    layout, x, table, grad_out = make_case(seed=1)
    out16, gx16, gt16 = encode_and_grads(hash_grid_encode, x, table, grad_out, layout=layout,
                                         storage_dtype=torch.float16)
    out32, gx32, gt32 = encode_and_grads(hash_grid_encode, x, table, grad_out, layout=layout,
                                         storage_dtype=torch.float32)
    assert (out16 - out32).abs().max() > 1e-5  # float16 rounding (~5e-4 relative), far above float32's
    close(out16, out32, 2e-3)
    assert (gx16 - gx32).abs().max() > 0  # the x-gradient reads the rounded values too
    torch.testing.assert_close(gt16, gt32, rtol=1e-6, atol=1e-7)


def test_table_gradient_is_never_rounded_to_float16(backend):
    """Per-entry gradients below float16's smallest subnormal (6e-8) survive: float32 accumulation."""
    layout, x, table, grad_out = make_case(seed=2)
    _, _, gt = encode_and_grads(hash_grid_encode, x, table, grad_out * 1e-9, layout=layout,
                                storage_dtype=torch.float16)
    assert gt.dtype == torch.float32
    touched = gt != 0
    assert touched.any() and (gt.half()[touched] == 0).all()  # all of them would flush to zero in float16


def test_storage_of_the_table_dtype_is_a_no_op(backend):
    layout, x, table, grad_out = make_case(seed=3)
    default = encode_and_grads(hash_grid_encode, x, table, grad_out, layout=layout)
    same = encode_and_grads(hash_grid_encode, x, table, grad_out, layout=layout, storage_dtype=torch.float32)
    for a, b in zip(default, same):
        assert torch.equal(a, b)


@pytest.mark.parametrize("storage", [torch.bfloat16, torch.float64, torch.int32, "float16"])
def test_unsupported_storage_dtype_raises_naming_it(storage):
    layout, x, table, _ = make_case(n_points=4)
    with pytest.raises(TypeError, match=f"storage_dtype={storage!r}".replace("(", r"\(").replace(")", r"\)")):
        hash_grid_encode(x, table, layout, storage_dtype=storage)


def test_storage_wider_than_the_table_raises():
    layout, x, table, _ = make_case(n_points=4)
    with pytest.raises(TypeError, match="storage_dtype=torch.float32"):
        hash_grid_encode(x.half(), table.half(), layout, storage_dtype=torch.float32)


def test_float64_table_may_be_stored_in_float32(backend):
    layout, x, table, grad_out = make_case(seed=4, dtype=torch.float64)
    out, gx, gt = encode_and_grads(hash_grid_encode, x, table, grad_out, layout=layout, storage_dtype=torch.float32)
    out_r, gx_r, gt_r = encode_and_grads(ref.hash_grid_encode, x, table.float().double(), grad_out, layout=layout)
    assert out.dtype == gt.dtype == torch.float64
    close(out, out_r, 1e-12)
    close(gx, gx_r, 1e-10)
    close(gt, gt_r, 1e-12)
    assert (out - ref.hash_grid_encode(x, table, layout)).abs().max() > 1e-10  # rounded to float32


def test_empty_batch_with_float16_storage(backend):
    layout, _, table, _ = make_case()
    x = torch.zeros(0, 3, requires_grad=True)
    table.requires_grad_()
    out = hash_grid_encode(x, table, layout, storage_dtype=torch.float16)
    assert out.shape == (0, layout.n_output_dims) and out.dtype == torch.float32
    out.sum().backward()
    assert x.grad.shape == (0, 3) and table.grad.dtype == torch.float32 and (table.grad == 0).all()


@pytest.mark.parametrize("interpolation", ["Linear", "Smoothstep"])
def test_gradcheck_float64(backend, interpolation):
    """Storage of the table's dtype: the full gradcheck. float32 storage: w.r.t. x only (the rounded
    table is piecewise constant in the table, so only its straight-through gradient is defined)."""
    layout = GridLayout.create(3, 3, 2, 4, 2, 1.5)
    g = torch.Generator().manual_seed(5)
    x = (0.05 + 0.9 * torch.rand(6, 3, generator=g, dtype=torch.float64)).requires_grad_()
    table = torch.randn(layout.n_rows, 2, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: hash_grid_encode(a, b, layout, interpolation, storage_dtype=torch.float64), (x, table))
    fixed = table.detach()
    assert torch.autograd.gradcheck(
        lambda a: hash_grid_encode(a, fixed, layout, interpolation, storage_dtype=torch.float32), (x,))


def test_reference_float16_storage_differentiates_twice(monkeypatch):
    """Eikonal-style losses: d/dtable of a function of d/dx, through the straight-through rounding."""
    monkeypatch.setenv("NGP_BACKEND", "reference")
    layout, x, table, _ = make_case(n_points=20)
    x.requires_grad_(), table.requires_grad_()
    (gx,) = torch.autograd.grad(hash_grid_encode(x, table, layout, "Smoothstep", torch.float16).sum(), x,
                                create_graph=True)
    (gt,) = torch.autograd.grad(gx.square().sum(), table)
    rounded = table.detach().half().float().requires_grad_()
    (gx_r,) = torch.autograd.grad(ref.hash_grid_encode(x, rounded, layout, "Smoothstep").sum(), x, create_graph=True)
    (gt_r,) = torch.autograd.grad(gx_r.square().sum(), rounded)
    assert gt.dtype == torch.float32 and gt.abs().sum() > 0
    torch.testing.assert_close(gt, gt_r)


@pytest.mark.parametrize("storage", [torch.float16, torch.float32])
def test_custom_op_registration(monkeypatch, storage):
    """Schema, fake (meta) implementations and autograd registration of the compiled op."""
    monkeypatch.setenv("NGP_BACKEND", "numba")
    layout, x, table, grad_out = make_case(n_points=16)
    args = (x, table.requires_grad_(), list(layout.resolutions), list(layout.offsets), list(layout.hashed), 0, [], 1,
            storage)  # hash code 0 (CoherentPrime), its own primes, interpolation 1 (Linear)
    assert args[2:] == op_module._op_args(layout, "Linear", storage)
    torch.library.opcheck(op_module._encode_op, args)
    searched = args[:6] + ([1, 19349663, 83492791],) + args[7:]  # a searched hash's primes
    torch.library.opcheck(op_module._encode_op, searched)
    backward_args = (grad_out, x, table.detach(), *args[2:], True, True)
    torch.library.opcheck(op_module._encode_backward_op, backward_args)


def test_fake_tensors_give_the_master_dtypes(monkeypatch):
    """Under fake tensors (torch.compile's tracing) the op reports features in x's dtype and a table
    gradient in the master's dtype, whatever the storage."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setenv("NGP_BACKEND", "numba")
    layout, x, table, _ = make_case(n_points=8)
    with FakeTensorMode() as mode:
        xf, tf = mode.from_tensor(x).requires_grad_(), mode.from_tensor(table).requires_grad_()
        out = hash_grid_encode(xf, tf, layout, storage_dtype=torch.float16)
        gx, gt = torch.autograd.grad(out.sum(), (xf, tf))
    assert out.dtype == gx.dtype == gt.dtype == torch.float32 and gt.shape == table.shape


# ----------------------------------------------------------------------------------------------------
# The modules and their configs
# ----------------------------------------------------------------------------------------------------


def grid_pair(otype="HashGrid", **storage):
    """The same grid twice, float32 storage and float16 storage (``storage``: config key or keyword)."""
    config = {**CONFIG, "otype": otype}
    plain = ngp.Encoding(3, config)
    with torch.no_grad():
        plain.table.uniform_(-1, 1)
    if "key" in storage:
        half = ngp.Encoding(3, {**config, "storage_dtype": storage["key"]})
    else:
        half = type(plain)(3, config, storage_dtype=storage["keyword"])
    half.load_state_dict(plain.state_dict())
    return plain, half


@pytest.mark.parametrize("otype", ["HashGrid", "DenseGrid", "Grid"])
@pytest.mark.parametrize("storage", [{"key": "float16"}, {"key": "Float16"}, {"keyword": torch.float16},
                                     {"keyword": "float16"}])
def test_module_with_float16_storage(backend, otype, storage):
    plain, half = grid_pair(otype, **storage)
    assert half.storage_dtype == torch.float16 and half.table.dtype == torch.float32
    assert plain.storage_dtype is None
    assert "storage=float16" in repr(half) and "storage" not in repr(plain)
    x = torch.rand(64, 3, generator=torch.Generator().manual_seed(6))
    grad_out = torch.randn(64, half.n_output_dims, generator=torch.Generator().manual_seed(7))

    def run(module):
        module.zero_grad()
        xi = x.clone().requires_grad_()
        out = module(xi)
        out.backward(grad_out)
        return out.detach(), xi.grad, module.table.grad

    out, gx, gt = run(half)
    out32, _, gt32 = run(plain)
    out_r, gx_r, _ = encode_and_grads(ref.hash_grid_encode, x, plain.table.detach().half().float(), grad_out,
                                      layout=plain.layout)
    assert out.dtype == gt.dtype == half.table.dtype == torch.float32
    close(out, out_r, 1e-5)
    close(gx, gx_r, 1e-4)
    torch.testing.assert_close(gt, gt32, rtol=1e-6, atol=1e-7)  # straight-through
    assert (out - out32).abs().max() > 1e-5


def test_module_casts_coordinates_to_the_parameter_dtype(monkeypatch):
    seen = []
    original = op_module.hash_grid_encode

    def spy(x, table, *args):
        seen.append((x.dtype, table.dtype, args[-1]))
        return original(x, table, *args)

    monkeypatch.setattr("ngp.encodings.grid.hash_grid_encode", spy)
    half = ngp.Encoding(3, {**CONFIG, "storage_dtype": "float16"})
    for dtype in (torch.float16, torch.float32, torch.float64):
        assert half(torch.rand(5, 3).to(dtype)).dtype == torch.float32
    assert seen == [(torch.float32, torch.float32, torch.float16)] * 3


def test_float64_module_default_storage_follows_the_parameter():
    grid = HashGrid(3, CONFIG, dtype=torch.float64)
    assert grid.storage_dtype is None
    grid32 = HashGrid(3, {**CONFIG, "storage_dtype": "float32"}, dtype=torch.float64)
    assert grid32.storage_dtype == torch.float32 and "storage=float32" in repr(grid32)
    x = torch.rand(10, 3, dtype=torch.float64)
    grid32.load_state_dict(grid.state_dict())
    assert grid(x).dtype == grid32(x).dtype == torch.float64


@pytest.mark.parametrize("value", ["float8", "half", "bfloat16", 16])
def test_bad_storage_value_raises_naming_the_key(value):
    with pytest.raises(ngp.ConfigError, match=f"storage_dtype={value!r}"):
        ngp.Encoding(3, {**CONFIG, "storage_dtype": value})


def test_bad_or_contradicting_storage_keyword_raises():
    with pytest.raises(ngp.ConfigError, match="storage_dtype"):
        HashGrid(3, CONFIG, storage_dtype=torch.bfloat16)
    with pytest.raises(ngp.ConfigError, match="contradicts"):
        HashGrid(3, {**CONFIG, "storage_dtype": "float32"}, storage_dtype=torch.float16)
    agreeing = HashGrid(3, {**CONFIG, "storage_dtype": "float16"}, storage_dtype=torch.float16)
    assert agreeing.storage_dtype == torch.float16
    # tiny-cuda-nn's dtype=torch.float16: a float32 parameter read in half, a half output
    half = HashGrid(3, CONFIG, dtype=torch.float16)
    assert half.table.dtype == torch.float32 and half.storage_dtype == torch.float16
    assert half(torch.rand(4, 3)).dtype == torch.float16
    with pytest.raises(ngp.ConfigError, match="contradicts"):
        HashGrid(3, {**CONFIG, "storage_dtype": "float32"}, dtype=torch.float16)
    with pytest.raises(TypeError, match="dtype=torch.bfloat16"):
        HashGrid(3, CONFIG, dtype=torch.bfloat16)


def test_composite_passes_the_key_to_its_nested_grid():
    enc = ngp.Encoding(4, {"otype": "Composite", "nested": [
        {**CONFIG, "n_dims_to_encode": 3, "storage_dtype": "float16"},
        {"otype": "Identity"},
    ]})
    assert enc.nested[0].storage_dtype == torch.float16 and enc.nested[0].table.dtype == torch.float32


def test_storage_round_trips_through_a_checkpoint(tmp_path):
    """Checkpoints hold the config (JSON) next to the float32 tensors; the key rebuilds the same model."""
    config = {**CONFIG, "storage_dtype": "float16"}
    network = {"otype": "FullyFusedMLP", "n_neurons": 8, "n_hidden_layers": 1}
    torch.manual_seed(0)
    model = ngp.NetworkWithInputEncoding(3, 1, config, network)
    with torch.no_grad():
        model.encoding.table.uniform_(-1, 1)
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), {"encoding": config, "network": network})
    tensors, saved = load_checkpoint(tmp_path / "ckpt")
    assert tensors["encoding.table"].dtype == torch.float32
    restored = ngp.NetworkWithInputEncoding(3, 1, saved["encoding"], saved["network"])
    restored.load_state_dict(tensors)
    assert restored.encoding.storage_dtype == torch.float16
    x = torch.rand(20, 3)
    assert torch.equal(restored(x), model(x))
