"""``hash_grid_encode_given``: features computed earlier, handed back with the op's gradients.

The NeRF trainer encodes every marched sample without gradients, then trains on the samples in front
of the surfaces with those features; the gradients must be those of encoding them afresh.
"""

from __future__ import annotations

import pytest
import torch

from ngp.kernels.reference.hashgrid import GridLayout
from ngp.ops.hashgrid import hash_grid_encode, hash_grid_encode_given

LAYOUT = GridLayout.create(3, 5, 2, 7, 3, 1.6)  # coarse levels dense, fine levels hashed


def _backends():
    backends = ["numba", "reference"]
    try:
        import triton  # noqa: F401
        backends.append("triton")
    except ImportError:
        pass
    return backends


def _gradients(monkeypatch, backend, given: bool):
    monkeypatch.setenv("NGP_BACKEND", backend)
    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = torch.Generator().manual_seed(0)
    table = (torch.rand(LAYOUT.n_rows, 2, generator=g) * 2 - 1).requires_grad_()
    x = torch.rand(40, 3, generator=g).requires_grad_()
    grad_out = torch.randn(40, LAYOUT.n_output_dims, generator=g)
    if given:
        with torch.no_grad():
            features = hash_grid_encode(x, table, LAYOUT)
        out = hash_grid_encode_given(x, table, LAYOUT, features)
    else:
        out = hash_grid_encode(x, table, LAYOUT)
    out.backward(grad_out)
    return out.detach(), table.grad, x.grad


@pytest.mark.parametrize("backend", _backends())
def test_given_features_have_the_encodings_value_and_gradients(monkeypatch, backend):
    fresh, given = _gradients(monkeypatch, backend, False), _gradients(monkeypatch, backend, True)
    for a, b in zip(fresh, given):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert given[1].abs().sum() > 0 and given[2].abs().sum() > 0  # gradients did flow


def test_given_features_skip_the_forward_kernel(monkeypatch):
    from ngp.kernels.cpu import hashgrid as cpu

    monkeypatch.setenv("NGP_BACKEND", "numba")
    table = torch.rand(LAYOUT.n_rows, 2, requires_grad=True)
    x = torch.rand(10, 3)
    with torch.no_grad():
        features = hash_grid_encode(x, table, LAYOUT)
    calls = []
    monkeypatch.setattr(cpu, "forward", lambda *a, **k: calls.append(1))
    hash_grid_encode_given(x, table, LAYOUT, features).sum().backward()
    assert calls == [] and table.grad is not None


def test_given_features_of_the_wrong_shape_are_refused():
    table = torch.rand(LAYOUT.n_rows, 2, requires_grad=True)
    with pytest.raises(ValueError, match="features must be"):
        hash_grid_encode_given(torch.rand(10, 3), table, LAYOUT, torch.rand(9, LAYOUT.n_output_dims))


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_given_rounded_features_pass_their_gradient_through(monkeypatch, backend):
    """Features rounded to bfloat16 (hash_grid_encode_as, NeRF's pre-pass under bfloat16 autocast) are
    returned as they are, and their gradients are those of the float encoding rounded by a cast (autocast's)."""
    from ngp.ops.hashgrid import hash_grid_encode_as

    monkeypatch.setenv("NGP_BACKEND", backend)
    g = torch.Generator().manual_seed(1)
    table = (torch.rand(LAYOUT.n_rows, 2, generator=g) * 2 - 1).requires_grad_()
    x = torch.rand(40, 3, generator=g).requires_grad_()
    grad_out = torch.randn(40, LAYOUT.n_output_dims, generator=g).to(torch.bfloat16)
    cast = hash_grid_encode(x, table, LAYOUT).to(torch.bfloat16)
    cast.backward(grad_out)
    want = (cast.detach(), table.grad.clone(), x.grad.clone())
    table.grad, x.grad = None, None
    rounded = hash_grid_encode_as(x, table, LAYOUT, torch.bfloat16)
    out = hash_grid_encode_given(x, table, LAYOUT, rounded)
    assert out.dtype == torch.bfloat16
    out.backward(grad_out)
    for a, b in zip(want, (out.detach(), table.grad, x.grad)):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert table.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_given_features_of_an_unrelated_dtype_are_refused():
    table = torch.rand(LAYOUT.n_rows, 2, requires_grad=True)
    with pytest.raises(ValueError, match="features must be"):
        features = torch.zeros(10, LAYOUT.n_output_dims, dtype=torch.int16)
        hash_grid_encode_given(torch.rand(10, 3), table, LAYOUT, features)
