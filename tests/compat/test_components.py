"""tiny-cuda-nn and instant-ngp components added for compatibility, against their definitions:
OneBlob, TriangleWave, Composite's slices and reductions, Takikawa, the losses, Lion and SGD,
and the network variants (activations, 0 to 3 hidden layers, refused types)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ngp
from ngp.config import ConfigError
from ngp.losses import build_loss
from ngp.optim import build_optimizer

# ------------------------------------------------------------------------------------------ OneBlob


def quartic_mass(lo: float, hi: float, centre: float, radius: float, n: int = 4000) -> float:
    """Mass of the kernel 15/16 (1 - u^2)^2 (u = (t - centre) / radius) in [lo, hi], by the midpoint rule."""
    t = lo + (np.arange(n) + 0.5) * (hi - lo) / n
    u = (t - centre) / radius
    return float((15 / 16 * np.clip(1 - u * u, 0, None) ** 2).sum() * (hi - lo) / n / radius)


def test_oneblob_bins_hold_the_kernel_mass_with_wraparound():
    enc = ngp.Encoding(2, {"otype": "OneBlob", "n_bins": 8})
    x = torch.tensor([[0.3, 0.02]], dtype=torch.float64)  # the second blob wraps around 0
    out = enc(x).reshape(2, 8)
    for dim in range(2):
        centre = x[0, dim].item()
        for k in range(8):
            lo, hi = k / 8, (k + 1) / 8
            expected = sum(quartic_mass(lo + s, hi + s, centre, 1 / 8) for s in (-1.0, 0.0, 1.0))
            assert out[dim, k].item() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(out.sum(1), torch.ones(2, dtype=torch.float64))
    assert out[1, 7] > 0  # mass that wrapped to the last bin


def test_oneblob_gradcheck_and_bad_bins():
    enc = ngp.Encoding(1, {"otype": "OneBlob", "n_bins": 4})
    x = torch.tensor([[0.31], [0.77]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(enc, (x,))
    with pytest.raises(ConfigError, match="power of two"):
        ngp.Encoding(1, {"otype": "OneBlob", "n_bins": 12})


# ------------------------------------------------------------------------------------- TriangleWave


def test_triangle_wave_values():
    enc = ngp.Encoding(2, {"otype": "TriangleWave", "n_frequencies": 4})
    x = torch.tensor([[0.3, 0.85]], dtype=torch.float64)
    out = enc(x)[0]
    for dim, value in enumerate((0.3, 0.85)):
        for k in range(4):
            v = value * 2 ** (k - 1) + k / 4
            expected = abs(v - math.floor(v) - 0.5) * 4 - 1
            assert out[dim * 4 + k].item() == pytest.approx(expected, abs=1e-12)
    y = torch.tensor([[0.3, 0.6]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(enc, (y,))


# ---------------------------------------------------------------------------------------- Composite


def test_composite_dims_to_encode_begin_overlaps_and_wraps():
    """instant-ngp's tensor.json planes (0, 1), (1, 2), (2, 3) on 3 dims: xy, yz and zx."""
    nested = [{"dims_to_encode_begin": b, "n_dims_to_encode": 2, "otype": "Identity", "scale": 10.0 ** b}
              for b in range(3)]
    enc = ngp.Encoding(3, {"otype": "Composite", "nested": nested})
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert enc(x).tolist() == [[1.0, 2.0, 20.0, 30.0, 300.0, 100.0]]


def test_composite_skips_a_nested_encoding_left_without_dims():
    enc = ngp.Encoding(3, {"otype": "Composite", "nested": [
        {"n_dims_to_encode": 3, "otype": "SphericalHarmonics", "degree": 2},
        {"otype": "SphericalHarmonics", "n_bins": 4, "degree": 4}]})  # instant-ngp's: zero dims, not built
    assert len(enc.nested) == 1 and enc.n_output_dims == 4


@pytest.mark.parametrize("reduction, combine", [("Sum", torch.add), ("Product", torch.mul)])
def test_composite_reduction(reduction, combine):
    nested = [{"n_dims_to_encode": 2, "otype": "Frequency", "n_frequencies": 2},
              {"n_dims_to_encode": 2, "otype": "TriangleWave", "n_frequencies": 4}]
    concat = ngp.Encoding(4, {"otype": "Composite", "nested": nested})
    reduced = ngp.Encoding(4, {"otype": "Composite", "nested": nested, "reduction": reduction})
    x = torch.rand(5, 4)
    a, b = concat(x).split(8, dim=1)
    torch.testing.assert_close(reduced(x), combine(a, b))
    with pytest.raises(ConfigError, match="one width"):
        ngp.Encoding(3, {"otype": "Composite", "reduction": reduction, "nested": [
            {"n_dims_to_encode": 1, "otype": "Identity"}, {"otype": "Frequency", "n_frequencies": 1}]})


@pytest.mark.parametrize("nested, words", [
    ([{"otype": "Identity"}, {"otype": "Identity"}], "only one nested encoding may omit"),
    ([{"dims_to_encode_begin": 0, "n_dims_to_encode": 2, "otype": "Identity"}, {"otype": "Identity"}],
     "none may when dims_to_encode_begin"),
    ([{"n_dims_to_encode": 1, "otype": "Identity"}], "cover 1 of 3 dims"),
    ([{"dims_to_encode_begin": 3, "n_dims_to_encode": 1, "otype": "Identity"}], "dims_to_encode_begin=3"),
])
def test_composite_errors_name_the_problem(nested, words):
    with pytest.raises(ConfigError, match=words):
        ngp.Encoding(3, {"otype": "Composite", "nested": nested})


# ----------------------------------------------------------------------------------------- Takikawa


def sphere_shell(centres, half):
    return np.abs(np.linalg.norm(centres - 0.5, axis=1) - 0.3) <= half * math.sqrt(3)


def test_takikawa_features_interpolate_corners_and_vanish_off_the_octree():
    enc = ngp.Encoding(3, {"otype": "Takikawa", "n_levels": 5, "starting_level": 3, "n_features_per_level": 2},
                       seed=0, dtype=torch.float64)
    enc.build_octree(sphere_shell)
    with torch.no_grad():
        enc.table.copy_(torch.randn_like(enc.table))
    on_shell = torch.tensor([[0.5, 0.5, 0.8], [0.2, 0.5, 0.5]], dtype=torch.float64)  # radius 0.3
    centre = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)
    assert (enc(on_shell).abs() > 0).all()
    assert enc(centre).abs().max() == 0  # 0.3 from the shell: no kept cell there at levels 3 and 4
    # a point exactly on a vertex reads that vertex's row at every level (trilinear weights 1, 0, ...)
    vertex = torch.tensor([[0.5, 0.5, 0.8125]], dtype=torch.float64)  # on the 16- and 8-cell lattices
    out = enc(vertex).reshape(2, 2)
    level = 4
    cell = torch.tensor([8, 8, 13])  # the kept cell whose corner 0 is that vertex at level 4
    key = cell[0] + 16 * (cell[1] + 16 * cell[2])
    index = torch.searchsorted(enc.cells_4, key)
    assert enc.cells_4[index] == key
    torch.testing.assert_close(out[level - 3], enc.table[enc.corners_4[index, 0]])
    x = (torch.rand(6, 3, dtype=torch.float64) * 0.1 + torch.tensor([0.45, 0.45, 0.75])).requires_grad_()
    assert torch.autograd.gradcheck(enc, (x,))


def test_takikawa_sum_state_dict_and_errors():
    config = {"otype": "Takikawa", "n_levels": 5, "starting_level": 1, "sum_instead_of_concat": True}
    enc = ngp.Encoding(3, config)
    with pytest.raises(RuntimeError, match="no octree"):
        enc(torch.rand(2, 3))
    enc.build_octree(sphere_shell)
    assert enc.n_output_dims == 8
    fresh = ngp.Encoding(3, config)  # as a model built from a checkpoint's config: no mesh, no octree
    fresh.load_state_dict(enc.state_dict())
    x = torch.rand(10, 3)
    assert torch.equal(fresh(x), enc(x))
    concat = ngp.Encoding(3, {**config, "sum_instead_of_concat": False})
    concat.load_state_dict(enc.state_dict())
    torch.testing.assert_close(enc(x), concat(x).reshape(10, 4, 8).sum(1))
    with pytest.raises(ConfigError, match="3-D"):
        ngp.Encoding(2, {"otype": "Takikawa"})
    with pytest.raises(ConfigError, match="starting_level"):
        ngp.Encoding(3, {"otype": "Takikawa", "n_levels": 4, "starting_level": 4})


def test_takikawa_sdf_run_reloads_from_its_checkpoint(tmp_path):
    import trimesh

    from ngp.sdf.model import NeuralSDF
    from ngp.sdf.trainer import SDFOutputs, fit_sdf

    mesh = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    mesh.export(str(tmp_path / "sphere.obj"))
    config = {"encoding": {"otype": "Takikawa", "n_levels": 6, "starting_level": 2},
              "network": {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1},
              "training": {"batch_size": 512, "pool_size": 1024, "pool_refresh": 32}}
    outputs = SDFOutputs(resolution=16, iou_resolution=8, render_size=(8, 8), chamfer_samples=200)
    fit_sdf(tmp_path / "sphere.obj", tmp_path / "run", steps=2, config=config, progress=False, device="cpu",
            outputs=outputs)
    model = NeuralSDF.from_checkpoint(tmp_path / "run")
    assert model.field.encoding.built and len(model.field.encoding.cells_5) > 0
    points = torch.rand(16, 3) * 2 - 1
    assert torch.isfinite(model(points)).all()


# ------------------------------------------------------------------------------------------- losses


def test_tcnn_losses_values_and_detached_scales():
    pred = torch.tensor([[0.5, -0.2, 1.0, 0.1, 0.3, 0.2]], requires_grad=True)
    target = torch.tensor([[0.4, 0.1, 0.8, 0.0, 0.2, 0.5]])
    d = (pred - target).detach()
    p = pred.detach()
    rgb = p[0, :3] + p[0, 3:6]
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    n = d.numel()
    expected = {  # (value, gradient): tiny-cuda-nn's gradients treat the normalising scale as a constant
        "RelativeL1": ((d.abs() / (p.abs() + 0.01)).mean(), d.sign() / (p.abs() + 0.01) / n),
        "SMAPE": ((d.abs() / (0.5 * (p.abs() + target.abs()) + 0.01)).mean(),
                  d.sign() / (0.5 * (p.abs() + target.abs()) + 0.01) / n),
        "RelativeL2Luminance": ((d.square() / (luminance**2 + 0.01)).mean(), 2 * d / (luminance**2 + 0.01) / n),
    }
    for name, (value, gradient) in expected.items():
        loss = build_loss({"otype": name})(pred, target)
        torch.testing.assert_close(loss, value)
        (grad,) = torch.autograd.grad(loss, pred)
        torch.testing.assert_close(grad, gradient)
    with pytest.raises(ConfigError, match="CrossEntropy.*not supported"):
        build_loss({"otype": "CrossEntropy"})


# --------------------------------------------------------------------------------------- optimizers


def test_lion_step_is_tiny_cuda_nns():
    model = torch.nn.Linear(3, 2, bias=False)
    w0 = model.weight.detach().clone()
    optimizer = build_optimizer({"otype": "Lion", "learning_rate": 0.1, "beta1": 0.9, "beta2": 0.99,
                                 "weight_decay": 0.5}, model)
    grads = [torch.randn(2, 3), torch.randn(2, 3)]
    m, w = torch.zeros(2, 3), w0.clone()
    for g in grads:
        model.weight.grad = g.clone()
        optimizer.step()
        w = w * (1 - 0.1 * 0.5) - 0.1 * torch.sign(0.9 * m + 0.1 * g)
        m = 0.99 * m + 0.01 * g
    torch.testing.assert_close(model.weight.detach(), w)


def test_sgd_step_and_refused_optimizers():
    model = torch.nn.Linear(3, 2, bias=False)
    w0 = model.weight.detach().clone()
    optimizer = build_optimizer({"otype": "Ema", "decay": 0.9, "nested": {"otype": "SGD", "learning_rate": 0.1,
                                                                          "l2_reg": 0.01}}, model)
    g = torch.randn(2, 3)
    model.weight.grad = g.clone()
    optimizer.step()
    torch.testing.assert_close(model.weight.detach(), w0 - 0.1 * (g + 0.01 * w0))
    for otype in ("Novograd", "Shampoo", "Lookahead"):
        with pytest.raises(ConfigError, match=f"{otype}.*not supported"):
            build_optimizer({"otype": otype}, model)
    with pytest.raises(ConfigError, match="momentum"):
        build_optimizer({"otype": "Lion", "momentum": 0.9}, model)


# ----------------------------------------------------------------------------------------- networks

ACTIVATIONS = {  # tiny-cuda-nn's definitions (its K_ACT = 10 sharpening for Squareplus and Softplus)
    "None": lambda x: x,
    "ReLU": lambda x: x.clamp_min(0),
    "LeakyReLU": lambda x: torch.where(x > 0, x, 0.01 * x),
    "Exponential": torch.exp,
    "Sine": torch.sin,
    "Sigmoid": torch.sigmoid,
    "Squareplus": lambda x: 0.5 * (10 * x + torch.sqrt((10 * x) ** 2 + 4)) / 10,
    "Softplus": lambda x: torch.log(torch.exp(10 * x) + 1) / 10,
    "Tanh": torch.tanh,
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_network_activations_are_tiny_cuda_nns(name):
    net = ngp.Network(4, 4, {"otype": "CutlassMLP", "n_hidden_layers": 0, "output_activation": name}, seed=0)
    x = torch.randn(8, 4) * 0.3
    linear = x @ net.layers[0].weight.T
    torch.testing.assert_close(net(x), ACTIVATIONS[name](linear), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("otype", ["FullyFusedMLP", "CutlassMLP", "MegakernelMLP"])
def test_network_depths_and_types(depth, otype):
    net = ngp.Network(5, 3, {"otype": otype, "n_neurons": 16, "n_hidden_layers": depth})
    linears = [m for m in net.layers if isinstance(m, torch.nn.Linear)]
    assert len(linears) == depth + 1
    assert [tuple(m.weight.shape) for m in linears] == ([(3, 5)] if depth == 0 else
                                                        [(16, 5)] + [(16, 16)] * (depth - 1) + [(3, 16)])
    assert net(torch.rand(2, 5)).shape == (2, 3)


def test_refused_network_options_name_the_key():
    with pytest.raises(ConfigError, match="CutlassResNet.*not supported"):
        ngp.Network(4, 4, {"otype": "CutlassResNet", "n_blocks": 2})
    with pytest.raises(ConfigError, match="feedback_alignment"):
        ngp.Network(4, 4, {"otype": "FullyFusedMLP", "feedback_alignment": True})
    assert ngp.Network(4, 4, {"otype": "FullyFusedMLP", "feedback_alignment": False})(torch.rand(1, 4)).shape == (1, 4)
