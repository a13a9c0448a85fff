"""A kernel backend against the plain-PyTorch reference, shared by the hash-function tests."""

from __future__ import annotations

import torch

from ngp.ops.hashgrid import hash_grid_encode


def encode_with_grads(x, table, layout, interpolation, grad_out):
    """``hash_grid_encode``'s output, table gradient and input gradient (zeros where none flows)."""
    xi, ti = x.clone().requires_grad_(), table.clone().requires_grad_()
    out = hash_grid_encode(xi, ti, layout, interpolation)
    out.backward(grad_out)
    return out.detach(), ti.grad, xi.grad if xi.grad is not None else torch.zeros_like(x)


def assert_backend_matches_reference(backend, x, table, layout, grad_out, monkeypatch, interpolation="Linear"):
    """Forward and both gradients of ``backend`` equal the reference's (float64, 1e-10); returns the
    backend's ``(out, table_grad, x_grad)``."""
    monkeypatch.setenv("NGP_BACKEND", "reference")
    expected = encode_with_grads(x, table, layout, interpolation, grad_out)
    monkeypatch.setenv("NGP_BACKEND", backend)
    got = encode_with_grads(x, table, layout, interpolation, grad_out)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    return got
