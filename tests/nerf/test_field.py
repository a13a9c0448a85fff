"""The NeRF field: shapes, activations, configs (ours and instant-ngp's), the density shortcut."""

import math
import warnings

import pytest
import torch

from ngp.config import ConfigError
from ngp.nerf.field import DEFAULT_CONFIG, NerfField, parse_nerf_config, trunc_exp

UNIT_AABB = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
SMALL = {"encoding": {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
                      "base_resolution": 4, "per_level_scale": 2.0}}

# instant-ngp's own configs/nerf/base.json (abridged to its keys and structure)
INSTANT_NGP_BASE = {
    "loss": {"otype": "Huber"},
    "optimizer": {"otype": "Ema", "decay": 0.95, "nested": {
        "otype": "ExponentialDecay", "decay_start": 20000, "decay_interval": 10000, "decay_base": 0.33,
        "nested": {"otype": "Adam", "learning_rate": 1e-2, "beta1": 0.9, "beta2": 0.99, "epsilon": 1e-15,
                   "l2_reg": 1e-6}}},
    "encoding": {"otype": "HashGrid", "n_levels": 6, "n_features_per_level": 8, "log2_hashmap_size": 19,
                 "base_resolution": 16},
    "network": {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None", "n_neurons": 64,
                "n_hidden_layers": 1},
    "dir_encoding": {"otype": "Composite", "nested": [
        {"n_dims_to_encode": 3, "otype": "SphericalHarmonics", "degree": 4}, {"otype": "Identity"}]},
    "rgb_network": {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                    "n_neurons": 64, "n_hidden_layers": 2},
    "distortion_map": {"resolution": [32, 32], "optimizer": {"otype": "Adam"}},
    "envmap": {"loss": {"otype": "RelativeL2"}, "optimizer": {"otype": "Adam"}},
}


def unit_directions(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)


def test_default_field_is_the_papers():
    field = NerfField(UNIT_AABB)
    layout = field.encoding.layout
    assert (layout.n_levels, layout.n_features) == (16, 2)
    assert layout.resolutions[0] == 16 and layout.resolutions[-1] == 2048
    assert max(b - a for a, b in zip(layout.offsets[:-1], layout.offsets[1:])) == 2**19
    assert field.dir_encoding.n_output_dims == 16
    linears = [m for m in field.density_network.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(64, 32), (16, 64)]
    linears = [m for m in field.rgb_network.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(64, 32), (64, 64), (3, 64)]


def test_finest_resolution_scales_with_aabb_scale():
    field = NerfField(torch.tensor([[-0.5] * 3, [1.5] * 3]), aabb_scale=2,
                      config={"encoding": {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 12}})
    assert field.encoding.layout.resolutions[-1] == 4096


def test_shapes_and_activations():
    torch.manual_seed(0)
    field = NerfField(UNIT_AABB, config=SMALL)
    x = torch.rand(100, 3) * 1.4 - 0.2  # some points outside the box: clamped, still finite
    sigma, rgb = field(x, unit_directions(100))
    assert sigma.shape == (100,) and rgb.shape == (100, 3)
    assert (sigma > 0).all() and torch.isfinite(sigma).all()
    assert ((rgb > 0) & (rgb < 1)).all()
    # the density shortcut (first output only) equals the full forward pass
    torch.testing.assert_close(field.density(x), sigma)


def test_per_ray_directions_equal_per_sample_directions():
    torch.manual_seed(0)
    field = NerfField(UNIT_AABB, config=SMALL)
    dirs = unit_directions(5)
    ray_indices = torch.tensor([0, 0, 1, 3, 3, 3, 4])
    x = torch.rand(7, 3)
    s1, c1 = field(x, dirs, ray_indices)
    s2, c2 = field(x, dirs[ray_indices])
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close(s1, s2)
    with pytest.raises(ValueError, match="ray_indices"):
        field(x, dirs)


def test_colour_depends_on_view_direction_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    field = NerfField(UNIT_AABB, config=SMALL)
    x = torch.rand(64, 3)
    d = unit_directions(64)
    sigma, rgb = field(x, d)
    _, rgb_flipped = field(x, -d)
    assert (rgb - rgb_flipped).abs().max() > 1e-4
    (sigma.sum() + rgb.sum()).backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_colour_of_chosen_rows_is_the_colour_of_those_samples(dtype):
    """color(h, d, ray_indices, rows=...) (rendering: only the samples that show) is the colour of
    h[rows] with their rays' directions, bit for bit, in float32 and in bfloat16 (rendering's)."""
    torch.manual_seed(0)
    field = NerfField(UNIT_AABB, config=SMALL)
    ray_indices = torch.sort(torch.randint(0, 50, (400,)))[0]
    d = unit_directions(50)
    rows = torch.sort(torch.randperm(400)[:150])[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        h = field.geometry(torch.rand(400, 3), dtype=dtype)
        chosen = field.color(h, d, ray_indices, rows=rows)
        assert torch.equal(chosen, field.color(h[rows], d, ray_indices[rows]))
        # the directions encoded beforehand (a renderer's chunk of rays, once for all its rounds)
        encoded = field.direction_features(d).to(h.dtype)
        assert torch.equal(chosen, field.color(h, None, ray_indices, rows=rows, direction_features=encoded))
    with pytest.raises(ValueError, match="ray_indices"):
        field.color(h, d, rows=rows)
    for directions, features in ((d, encoded), (None, None)):
        with pytest.raises(ValueError, match="either directions or direction_features"):
            field.color(h, directions, ray_indices, direction_features=features)


def test_trunc_exp_is_bounded_with_useful_gradients():
    x = torch.tensor([0.0, 10.0, 100.0], requires_grad=True)
    y = trunc_exp(x)
    assert torch.isfinite(y).all() and y[2].item() == pytest.approx(math.exp(15.0), rel=1e-5)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad > 0).all()


def test_instant_ngp_config_loads_and_keeps_its_inactive_sections():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # accepted as instant-ngp does (features off by default): no warning
        config = parse_nerf_config(INSTANT_NGP_BASE)
    assert config["envmap"] == INSTANT_NGP_BASE["envmap"] and config["encoding"]["n_features_per_level"] == 8
    field = NerfField(UNIT_AABB, config=config)
    assert field.encoding.n_output_dims == 48 and field.dir_encoding.n_output_dims == 16
    sigma, rgb = field(torch.rand(4, 3), unit_directions(4))
    assert rgb.shape == (4, 3)


@pytest.mark.parametrize("section, value, words", [
    ("distortion_map", {"resolution": [32]}, "resolution"),
    ("distortion_map", {"resolutoin": [32, 32]}, "resolutoin"),
    ("distortion_map", {"optimizer": {"otype": "Adamm"}}, "Adamm"),
    ("envmap", {"loss": {"otype": "L3"}}, "L3"),
    ("envmap", {"optimizer": {"otype": "Ema", "nested": {"otype": "Adamm"}}}, "Adamm"),
    ("envmap", [1, 2], "'envmap' must be a JSON object"),
])
def test_inactive_sections_are_validated(section, value, words):
    with pytest.raises(ConfigError, match=words):
        parse_nerf_config({**INSTANT_NGP_BASE, section: value})


def test_takikawa_is_refused_for_a_nerf():
    with pytest.raises(ConfigError, match="Takikawa.*SDF"):
        NerfField(UNIT_AABB, config={"encoding": {"otype": "Takikawa"}})


def test_config_file_with_comments_loads(tmp_path):
    path = tmp_path / "nerf.json"
    path.write_text('// a comment, as instant-ngp configs have\n{"network": {"otype": "FullyFusedMLP", '
                    '"n_neurons": 32, "n_hidden_layers": 1}}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = parse_nerf_config(path)
    assert config["network"]["n_neurons"] == 32
    assert config["rgb_network"] == DEFAULT_CONFIG["rgb_network"]  # missing sections: defaults


def test_unknown_keys_are_rejected():
    with pytest.raises(ConfigError, match="unknown key.*'encodings'"):
        parse_nerf_config({"encodings": {}})
    with pytest.raises(ConfigError, match="n_level"):
        NerfField(UNIT_AABB, config={"encoding": {"otype": "HashGrid", "n_level": 4}})
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_nerf_config({"network": 3})


def test_bad_inputs():
    field = NerfField(UNIT_AABB, config=SMALL)
    with pytest.raises(ValueError, match=r"\[S, 3\]"):
        field.density(torch.rand(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        field.density(torch.tensor([[float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="aabb"):
        NerfField(torch.tensor([[0.0] * 3, [0.0] * 3]))


def test_field_with_given_features_equals_the_field():
    """forward(..., features=encode(positions)) has the same outputs and gradients as forward()."""
    torch.manual_seed(0)
    field = NerfField(UNIT_AABB, config=SMALL)
    with torch.no_grad():
        field.encoding.table.uniform_(-1, 1)
    positions, directions = torch.rand(64, 3), unit_directions(64)
    results = []
    for given in (False, True):
        field.zero_grad()
        features = field.encode(positions).detach() if given else None
        sigma, rgb = field(positions, directions, features=features)
        (sigma.sum() + rgb.square().sum()).backward()
        results.append([sigma.detach(), rgb.detach()] + [p.grad.clone() for p in field.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a)
    assert field.density_from_features(field.encode(positions)).shape == (64,)


def test_density_from_features_under_bfloat16_autocast_matches_the_full_network():
    """The pre-pass's densities (rows padded for oneDNN under CPU autocast, only the log-density column
    computed) are the density network's first output, row for row."""
    torch.manual_seed(0)
    field = NerfField(UNIT_AABB, config=SMALL)
    with torch.no_grad():
        field.encoding.table.uniform_(-1, 1)
        features = field.encode(torch.rand(1000, 3))  # 1000 rows: padded to 1024
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sigma = field.density_from_features(features)
            log_density = field.density_network(features)[:, 0]
    assert sigma.shape == (1000,) and sigma.dtype == torch.float32
    torch.testing.assert_close(sigma, trunc_exp(log_density), rtol=2e-2, atol=1e-3)


def test_density_from_features_pads_small_calls_to_one_row_count(monkeypatch):
    """The pre-pass's last rounds evaluate a few dozen samples each; each new row count made oneDNN build
    a kernel (~1.5 ms). Calls below PAD_ROWS_MIN rows run on PAD_ROWS_MIN rows, with the same densities."""
    from ngp import networks

    if networks._LINEAR_RELU is None:
        pytest.skip("this PyTorch build has no fused oneDNN linear + ReLU")
    rows = []
    fused = networks._LINEAR_RELU
    monkeypatch.setattr(networks, "_LINEAR_RELU", lambda x, *args: rows.append(x.shape[0]) or fused(x, *args))
    torch.manual_seed(0)
    field = NerfField(UNIT_AABB, config=SMALL)
    with torch.no_grad():
        field.encoding.table.uniform_(-1, 1)
        features = field.encode(torch.rand(200, 3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            small = [field.density_from_features(features[:n]) for n in (37, 61, 200)]
            whole = field.density_from_features(features)
    assert rows == [networks.PAD_ROWS_MIN] * 4
    for n, sigma in zip((37, 61, 200), small):
        assert sigma.shape == (n,) and torch.equal(sigma, whole[:n])


def test_geometry_in_the_rendering_dtype_is_the_float32_geometry_rounded():
    """geometry(dtype=bfloat16) (rendering: the hash grid writes bfloat16 features, the density
    network hands its bfloat16 product on) holds exactly what the float32 path gives, rounded; it is
    refused with gradients (training needs the float32 path)."""
    torch.manual_seed(0)
    field = NerfField(UNIT_AABB, config=SMALL)
    positions = torch.rand(3000, 3)
    with torch.no_grad():
        field.encoding.table.uniform_(-1, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            usual = field.geometry(positions)
            rounded = field.geometry(positions, dtype=torch.bfloat16)
    assert rounded.dtype == torch.bfloat16 and torch.equal(rounded, usual.to(torch.bfloat16))
    with pytest.raises(ValueError, match="without gradients"):
        field.geometry(positions, dtype=torch.bfloat16)


@pytest.mark.parametrize("config", [{"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 10},
                                    {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 10, "reduction": "Sum"},
                                    {"otype": "Frequency", "n_frequencies": 3}])
def test_encoding_forward_as_is_the_output_rounded(config):
    """Encoding.forward_as(x, dtype): the hash grid's kernels round as they write, a reduced grid and
    other encodings convert their output; the numbers are the same, without gradients."""
    from ngp.encodings import Encoding

    encoding = Encoding(3, config, seed=2)
    x = torch.rand(2500, 3, generator=torch.Generator().manual_seed(3))
    rounded = encoding.forward_as(x, torch.bfloat16)
    assert rounded.dtype == torch.bfloat16 and not rounded.requires_grad
    assert torch.equal(rounded, encoding(x).detach().to(torch.bfloat16))
