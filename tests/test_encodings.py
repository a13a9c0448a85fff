"""Non-grid encodings against closed forms, and the input checks every encoding shares."""

import math

import pytest
import torch

import ngp
from ngp.encodings import real_spherical_harmonics


def unit_directions(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)


def test_spherical_harmonics_match_closed_forms_up_to_degree_4():
    d = unit_directions(50)
    x, y, z = d.unbind(-1)
    xy, yz, xz, x2, y2, z2 = x * y, y * z, x * z, x * x, y * y, z * z
    expected = [  # the polynomials tiny-cuda-nn hard-codes (Sloan's real SH, Condon-Shortley phase)
        torch.full_like(x, 0.28209479177387814),
        -0.48860251190291987 * y,
        0.48860251190291987 * z,
        -0.48860251190291987 * x,
        1.0925484305920792 * xy,
        -1.0925484305920792 * yz,
        0.94617469575755997 * z2 - 0.31539156525251999,
        -1.0925484305920792 * xz,
        0.54627421529603959 * x2 - 0.54627421529603959 * y2,
        0.59004358992664352 * y * (-3.0 * x2 + y2),
        2.8906114426405538 * xy * z,
        0.45704579946446572 * y * (1.0 - 5.0 * z2),
        0.3731763325901154 * z * (5.0 * z2 - 3.0),
        0.45704579946446572 * x * (1.0 - 5.0 * z2),
        1.4453057213202769 * z * (x2 - y2),
        0.59004358992664352 * x * (-x2 + 3.0 * y2),
    ]
    got = real_spherical_harmonics(d, 4)
    assert got.shape == (50, 16)
    torch.testing.assert_close(got, torch.stack(expected, -1), rtol=1e-12, atol=1e-12)


def test_spherical_harmonics_degree_8_are_orthonormal():
    # Quasi-Monte-Carlo over the sphere: the Gram matrix of orthonormal functions is I.
    n = 200_000
    g = torch.Generator().manual_seed(1)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    y = real_spherical_harmonics(d, 8)
    gram = y.T @ y * (4 * math.pi / n)
    torch.testing.assert_close(gram, torch.eye(64, dtype=torch.float64), atol=0.03, rtol=0)


def test_spherical_harmonics_encoding_maps_unit_cube_inputs_back_to_directions():
    enc = ngp.Encoding(3, {"otype": "SphericalHarmonics", "degree": 3})
    d = unit_directions(10)
    torch.testing.assert_close(enc((d + 1) / 2), real_spherical_harmonics(d, 3))
    assert enc.n_output_dims == 9


@pytest.mark.parametrize("degree", range(1, 9))
def test_spherical_harmonics_kernel_equals_the_reference_bit_for_bit(degree):
    from ngp.kernels.cpu.spherical_harmonics import BLOCK, spherical_harmonics

    g = torch.Generator().manual_seed(degree)
    d = torch.nn.functional.normalize(torch.randn(3 * BLOCK + 5, 3, generator=g), dim=-1)  # a partial block
    x = torch.cat([(d + 1) / 2, torch.rand(40, 3, generator=g),  # not unit length: used as they are
                   torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.5, 0.5, 1.0]])])
    expected = real_spherical_harmonics(x * 2.0 - 1.0, degree)
    got = spherical_harmonics(x, degree)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.equal(got, expected), f"{int((got != expected).sum())} of {got.numel()} values differ, by up to " \
                                       f"{float((got - expected).abs().max()):.2e}"
    assert spherical_harmonics(x[:0], degree).shape == (0, degree * degree)


def test_spherical_harmonics_encoding_takes_the_kernel_only_without_input_gradients(monkeypatch):
    from ngp.kernels.cpu import spherical_harmonics as kernel

    enc = ngp.Encoding(3, {"otype": "SphericalHarmonics", "degree": 4})
    x = ((unit_directions(300).float() + 1) / 2).requires_grad_()
    calls = []
    monkeypatch.setattr(kernel, "spherical_harmonics", lambda *a: calls.append(1) or real_spherical_harmonics(
        a[0] * 2.0 - 1.0, a[1]))
    with torch.no_grad():
        enc(x)
    enc(x.detach())
    assert len(calls) == 2
    y = enc(x)  # gradients w.r.t. the directions: the reference, differentiable
    assert len(calls) == 2 and y.requires_grad
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_frequency_encoding_values_and_order():
    enc = ngp.Encoding(2, {"otype": "Frequency", "n_frequencies": 3})
    x = torch.tensor([[0.25, 0.1]], dtype=torch.float64)
    out = enc(x)
    assert out.shape == (1, 12)
    for dim in range(2):
        for k in range(3):
            phase = x[0, dim] * math.pi * 2**k
            assert out[0, dim * 6 + 2 * k].item() == pytest.approx(math.sin(phase))
            assert out[0, dim * 6 + 2 * k + 1].item() == pytest.approx(math.cos(phase))


def test_identity_and_composite_route_dimensions():
    enc = ngp.Encoding(5, {"otype": "Composite", "nested": [
        {"otype": "Identity", "n_dims_to_encode": 2, "scale": 2.0, "offset": 1.0},
        {"otype": "Frequency", "n_dims_to_encode": 1, "n_frequencies": 1},
        {"otype": "Identity"},
    ]})
    x = torch.rand(4, 5)
    out = enc(x)
    assert enc.n_output_dims == 2 + 2 + 2
    torch.testing.assert_close(out[:, :2], x[:, :2] * 2 + 1)
    torch.testing.assert_close(out[:, 2], torch.sin(math.pi * x[:, 2]))
    torch.testing.assert_close(out[:, 4:], x[:, 3:])


def test_composite_must_cover_all_dims():
    with pytest.raises(ngp.ConfigError, match="cover"):
        ngp.Encoding(4, {"otype": "Composite", "nested": [{"otype": "Identity", "n_dims_to_encode": 2}]})


def test_factory_returns_concrete_subclasses():
    enc = ngp.Encoding(2, {"otype": "HashGrid", "n_levels": 2})
    assert isinstance(enc, ngp.Encoding) and type(enc).__name__ == "HashGrid"


@pytest.mark.parametrize("otype", ["HashGrid", "Frequency", "Identity"])
def test_encodings_reject_bad_inputs(otype):
    enc = ngp.Encoding(3, {"otype": otype})
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        enc(torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        enc(torch.rand(4))
    with pytest.raises(TypeError, match="floating"):
        enc(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        enc(torch.tensor([[0.1, float("nan"), 0.3]]))


def test_empty_batch_gives_empty_output():
    enc = ngp.Encoding(3, {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 10})
    out = enc(torch.empty(0, 3))
    assert out.shape == (0, 8)


def test_out_of_range_inputs_are_clamped_and_leave_the_table_alone():
    enc = ngp.Encoding(2, {"otype": "HashGrid", "n_levels": 3, "log2_hashmap_size": 10})
    before = enc.table.detach().clone()
    x = torch.tensor([[-0.5, 1.7], [3.0, -1.0]], requires_grad=True)
    out = enc(x)
    torch.testing.assert_close(out, enc(x.detach().clamp(0, 1)))
    out.sum().backward()
    assert torch.all(x.grad == 0)  # clamped coordinates carry no gradient
    assert torch.equal(enc.table.detach(), before)
    assert torch.isfinite(enc.table.grad).all()
