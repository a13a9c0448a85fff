"""Triton NeRF kernels (marching, compositing) against the plain-PyTorch reference.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by a module-scoped
fixture and restored afterwards; see ``tests/test_triton_kernels.py``) on small scenes: a few dozen
rays, coarse grids. Tests that need a real GPU skip without one.

Run: ``pytest tests/nerf/test_triton_nerf.py`` (needs ``pip install 'ngp[gpu]'``, i.e. triton).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install 'ngp[gpu]'); Triton kernels untested")

from ngp.kernels.reference import nerf as ref  # noqa: E402
from ngp.kernels.triton import kernels_for_mode  # noqa: E402
from ngp.kernels.triton import nerf as tn  # noqa: E402
from ngp.ops import nerf as ops  # noqa: E402

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")


pytestmark = pytest.mark.usefixtures("triton_interpreter")  # tests/conftest.py


def scene(n_rays=48, seed=0, dtype=torch.float32, resolution=8, n_cascades=2, density=0.35, device="cpu"):
    """Rays through a random cascaded occupancy grid around the unit cube (center 0.5, base size 1)."""
    g = torch.Generator().manual_seed(seed)
    occupied = (torch.rand(n_cascades, resolution**3, generator=g) < density).to(torch.uint8)
    lo, hi = 0.5 - 2 ** (n_cascades - 2), 0.5 + 2 ** (n_cascades - 2)  # the coarsest cascade
    o = torch.rand(n_rays, 3, generator=g, dtype=torch.float64) * (hi - lo + 2) + lo - 1
    target = torch.rand(n_rays, 3, generator=g, dtype=torch.float64) * 0.6 + 0.2
    d = torch.nn.functional.normalize(target - o, dim=-1)
    d[:4, 0] = 0.0  # axis-parallel rays: infinite exit distances along x
    d = torch.nn.functional.normalize(d, dim=-1)
    aabb = torch.tensor([[lo] * 3, [hi] * 3], dtype=torch.float64)
    near, far, _ = ref.ray_aabb_intersect(o, d, aabb)
    first = torch.rand(n_rays, generator=g, dtype=torch.float64)
    o, d, near, far = (t.to(dtype).to(device) for t in (o, d, near, far))
    base_size = 1.0
    min_step = math.sqrt(3) / 64 * base_size  # coarse steps: few iterations for the interpreter
    max_step = base_size * 2 ** (n_cascades - 1) * math.sqrt(3) / resolution
    return dict(origins=o, directions=d, t_near=near, t_far=far, first_offsets=first.to(device),
                occupied=occupied.to(device), center=(0.5, 0.5, 0.5), base_size=base_size, resolution=resolution,
                min_step=min_step, max_step=max_step)


def march_both(args, cone_angle, max_samples):
    full = (*args.values(), cone_angle, max_samples)
    return ref.march_rays(*full), tn.march_rays(*full)


# ----------------------------------------------------------------------------------------------------
# Marching
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cone_angle", [0.0, 0.05])
def test_march_matches_reference_exactly(cone_angle):
    expected, got = march_both(scene(), cone_angle, max_samples=64)
    names = ("positions", "ts", "t_starts", "t_ends", "ray_indices", "ray_offsets")
    assert expected[0].shape[0] > 200  # enough samples to mean something
    counts = expected[5][1:] - expected[5][:-1]
    assert (counts == 0).any() and (counts > 1).any()
    for name, e, g in zip(names, expected, got):
        assert e.dtype == g.dtype and e.shape == g.shape, name
        assert torch.equal(e, g), f"{name} differs (max {(e.double() - g.double()).abs().max()})"


def test_march_truncates_at_max_samples_and_handles_float64():
    args = scene(seed=1, dtype=torch.float64, density=0.9)
    expected, got = march_both(args, 0.0, max_samples=5)
    assert int((expected[5][1:] - expected[5][:-1]).max()) == 5
    for e, g in zip(expected, got):
        assert torch.equal(e, g)


def test_march_empty_grid_and_no_rays():
    args = scene(n_rays=16, seed=2)
    args["occupied"] = torch.zeros_like(args["occupied"])
    positions, ts, _, _, rays, offsets = tn.march_rays(*args.values(), 0.0, 64)
    assert positions.shape == (0, 3) and ts.shape == (0,) and rays.shape == (0,)
    assert torch.equal(offsets, torch.zeros(17, dtype=torch.int64))
    none = scene(n_rays=0, seed=3)
    out = tn.march_rays(*none.values(), 0.0, 64)
    assert out[0].shape == (0, 3) and torch.equal(out[5], torch.zeros(1, dtype=torch.int64))


# ----------------------------------------------------------------------------------------------------
# Compositing
# ----------------------------------------------------------------------------------------------------


def packed(n_rays=40, max_per_ray=24, n_channels=3, seed=0, dtype=torch.float32):
    """Random packed samples: some rays empty, some dense enough to terminate early."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_per_ray, (n_rays,), generator=g)
    counts[:2] = 0
    offsets = torch.zeros(n_rays + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    n = int(offsets[-1])
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    deltas = torch.rand(n, generator=g, dtype=dtype) * 0.05 + 1e-3
    ends = torch.cumsum(deltas, 0)
    t_ends = ends - torch.cat([torch.zeros(1, dtype=dtype), ends])[offsets[:-1]][ray_indices] + 0.5
    t_starts = t_ends - deltas
    scale = torch.rand(n_rays, generator=g, dtype=dtype)[ray_indices] * 600
    sigmas = torch.rand(n, generator=g, dtype=dtype) * scale
    sigmas[:5] = 1e-6  # tiny optical depth: 1 - exp(-tau) must not cancel
    rgbs = torch.rand(n, n_channels, generator=g, dtype=dtype)
    background = torch.rand(n_rays, n_channels, generator=g, dtype=dtype)
    return sigmas, rgbs, t_starts, t_ends, ray_indices, offsets, background


@pytest.mark.parametrize("n_channels,with_grad_weights", [(3, True), (3, False), (1, True), (5, False), (0, True)])
def test_composite_forward_and_backward_match_reference(n_channels, with_grad_weights):
    inputs = packed(n_channels=n_channels, seed=n_channels)
    n_rays, n = inputs[5].shape[0] - 1, inputs[0].shape[0]
    g = torch.Generator().manual_seed(1)
    grads = (torch.randn(n_rays, n_channels, generator=g), torch.randn(n_rays, generator=g),
             torch.randn(n_rays, generator=g), torch.randn(n, generator=g) if with_grad_weights else torch.zeros(0))
    expected = ref.composite_forward(*inputs, 1e-4)
    got = tn.composite_forward(*inputs, 1e-4)
    assert (expected[1] > 0.9999).sum() > 5, "test data must contain early-terminated rays"
    for e, g_ in zip(expected, got):
        assert e.dtype == g_.dtype and e.shape == g_.shape
        torch.testing.assert_close(g_, e, atol=2e-6, rtol=1e-5)
    expected_b = ref.composite_backward(*grads, *inputs, *expected[:3], 1e-4)
    got_b = tn.composite_backward(*grads, *inputs, *expected[:3], 1e-4)
    for e, g_ in zip(expected_b, got_b):
        assert e.dtype == g_.dtype and e.shape == g_.shape
        torch.testing.assert_close(g_, e, atol=2e-5, rtol=1e-4)
    assert got_b[0].abs().sum() > 0


def test_composite_float64_is_exact_to_rounding():
    inputs = packed(dtype=torch.float64, seed=7)
    expected = ref.composite_forward(*inputs, 1e-4)
    got = tn.composite_forward(*inputs, 1e-4)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-10)


# ----------------------------------------------------------------------------------------------------
# Through the ops: NGP_BACKEND=triton dispatches CPU tensors to these kernels under the interpreter
# ----------------------------------------------------------------------------------------------------


def test_ops_dispatch_to_triton_and_match_the_reference_backend(monkeypatch):
    args = scene(seed=4)
    grid = SimpleNamespace(occupied=args["occupied"].bool(), center=args["center"], base_size=args["base_size"],
                           resolution=args["resolution"], min_step_size=args["min_step"],
                           max_step_size=args["max_step"])
    rays = (args["origins"], args["directions"], args["t_near"], args["t_far"], grid)
    calls = []  # the Triton kernels the op reached: none if it stopped dispatching to them
    for name in ("march_rays", "composite_forward", "composite_backward"):
        monkeypatch.setattr(tn, name, lambda *a, _f=getattr(tn, name), _n=name, **k: (calls.append(_n),
                                                                                      _f(*a, **k))[1])

    def run(backend):
        monkeypatch.setenv("NGP_BACKEND", backend)
        s = ops.march_rays(*rays, cone_angle=0.02, max_samples_per_ray=32)
        sigmas = (s.positions.sum(-1) * 30).abs().clone().requires_grad_()
        rgbs = torch.sigmoid(s.positions).clone().requires_grad_()
        out = ops.composite(sigmas, rgbs, s.t_starts, s.t_ends, s.ray_indices, s.ray_offsets,
                            background=torch.ones(3))
        (out.color.square().sum() + out.depth.sum() + out.weights.sum()).backward()
        return s, out, sigmas.grad, rgbs.grad

    expected = run("reference")
    assert calls == []
    got = run("triton")
    assert calls == ["march_rays", "composite_forward", "composite_backward"]
    assert kernels_for_mode(tn.__name__).INTERPRETED
    for e, g in zip(expected[0], got[0]):
        assert torch.equal(e, g)
    for e, g in zip((*expected[1], *expected[2:]), (*got[1], *got[2:])):
        torch.testing.assert_close(g, e, atol=2e-5, rtol=1e-4)
    # Without a grid the op marches one huge always-occupied cell (resolution = cascades = 1: values
    # that Triton would specialise into constants on a GPU).
    plain = []
    for backend in ("reference", "triton"):
        monkeypatch.setenv("NGP_BACKEND", backend)
        plain.append(ops.march_rays(*rays[:4], None, step_size=0.05, max_samples_per_ray=16))
    assert calls[-1] == "march_rays" and len(calls) == 4
    assert plain[0].n_samples > 300
    for e, g in zip(*plain):
        assert torch.equal(e, g)


def test_kernels_compile_for_an_h100_without_a_gpu(monkeypatch):
    """Compile the real kernels (not the interpreter's reading of them) to sm_90 cubin; no GPU needed."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    import triton

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:  # pragma: no cover - depends on the Triton version
        pytest.skip(f"this Triton has no offline compile API: {exc}")
    k = kernels_for_mode(tn.__name__)
    f32 = "*fp32"
    # Triton turns integer arguments equal to 1 into compile-time constants: ops.march_rays without a
    # grid passes resolution = n_cascades = 1, so compile that specialisation too.
    ones = {"n_rays": 1, "resolution": 1, "n_cascades": 1, "max_samples": 1}
    cases = [
        (k._march_kernel, {"LINEAR": True, "WRITE": True, "BLOCK": 64, **ones}, {}),
        (k._march_kernel, {"LINEAR": False, "WRITE": True, "BLOCK": 64},
         {"first_ptr": "*fp64", "occ_ptr": "*u8", "p_ptr": "*fp64", "counts_ptr": "*i32", "offsets_ptr": "*i64",
          "rays_ptr": "*i64", "n_rays": "i32", "resolution": "i32", "n_cascades": "i32", "max_samples": "i32"}),
        (k._composite_forward_kernel, {"C": 3, "CP": 4, "BLOCK": 64},
         {"off_ptr": "*i64", "thr_ptr": "*fp64", "n_rays": "i32"}),
        (k._composite_backward_kernel, {"C": 3, "CP": 4, "HAS_GW": True, "BLOCK": 64},
         {"off_ptr": "*i64", "thr_ptr": "*fp64", "n_rays": "i32"}),
    ]
    for fn, const, types in cases:
        types = {"first_ptr": "*fp64", "occ_ptr": "*u8", "p_ptr": "*fp64", "counts_ptr": "*i32", "offsets_ptr": "*i64",
                 "rays_ptr": "*i64", **types}
        sig = {a: "constexpr" if a in const else types.get(a, f32) for a in fn.arg_names}
        kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                                options={"enable_fp_fusion": False})
        assert len(kernel.asm["cubin"]) > 0, fn.__name__


# ----------------------------------------------------------------------------------------------------
# Real GPU (skipped without one)
# ----------------------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.gpu
def test_cuda_kernels_match_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args = scene(n_rays=2048, resolution=32, n_cascades=3, seed=5)
    cuda_args = {k: v.cuda() if torch.is_tensor(v) else v for k, v in args.items()}
    expected = ref.march_rays(*args.values(), 1.0 / 256, 256)
    got = tn.march_rays(*cuda_args.values(), 1.0 / 256, 256)
    # libdevice's exp/log may differ from the CPU's in the last bit: compare counts closely, not bitwise
    assert abs(got[0].shape[0] - expected[0].shape[0]) <= expected[0].shape[0] // 1000 + 2
    inputs = packed(n_rays=4096, max_per_ray=128)
    expected_c = ref.composite_forward(*inputs, 1e-4)
    got_c = tn.composite_forward(*(t.cuda() for t in inputs), 1e-4)
    for e, g in zip(expected_c, got_c):
        torch.testing.assert_close(g.cpu(), e, atol=2e-6, rtol=1e-5)
