"""The Triton Adam kernel against the plain-PyTorch reference, through Triton's interpreter (CPU)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the 'triton' package (pip install 'ngp[gpu]')")

from ngp.kernels.reference import adam as reference_adam  # noqa: E402
from ngp.kernels.triton import adam as triton_adam  # noqa: E402

pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _run(fn, start, steps, sparse, l2, lr=0.01, seed=1):
    p, m, v = (t.clone() for t in start)
    counts = torch.zeros(p.shape, dtype=torch.int32)
    g = torch.Generator().manual_seed(seed)
    for step in steps:
        grad = torch.randn(p.shape, generator=g)
        grad.view(-1)[step::3] = 0  # different entries untouched each step: per-entry counts diverge
        fn(p, grad, m, v, step, lr, 0.9, 0.99, 1e-15, l2, counts if sparse else None)
    return p, m, v, counts


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("l2", [0.0, 1e-3])
def test_triton_adam_matches_reference(sparse, l2):
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(3000, generator=g) for _ in range(3)]  # not a multiple of the block size
    start[2] = start[2].abs()
    steps = (1, 2, 3, 4)
    expected = _run(reference_adam.adam_step_, start, steps, sparse, l2)
    got = _run(triton_adam.adam_step_, start, steps, sparse, l2)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=1e-6)
    assert not torch.equal(got[0], start[0])
    if sparse:
        # entry 0 is never zeroed; i = 1 mod 3 is zeroed at steps 1 and 4, the others at one step
        assert got[3][0] == 4 and got[3][1::3][1:].eq(2).all() and got[3][2::3].eq(3).all()


def test_2d_parameters_and_a_long_bias_correction_table():
    # tables are [rows, F]; a step count beyond the cached correction table's first size grows it
    g = torch.Generator().manual_seed(2)
    start = [torch.randn(70, 2, generator=g) for _ in range(3)]
    start[2] = start[2].abs()
    counts_start = torch.full((70, 2), 1500, dtype=torch.int32)
    results = []
    for fn in (reference_adam.adam_step_, triton_adam.adam_step_):
        p, m, v = (t.clone() for t in start)
        counts = counts_start.clone()
        grad = torch.randn(70, 2, generator=torch.Generator().manual_seed(3))
        fn(p, grad, m, v, 2000, 0.01, 0.9, 0.99, 1e-15, 0.0, counts)
        results.append((p, m, v, counts))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=1e-6)
    assert triton_adam.bias_corrections(0.9, 0.99, 2000, torch.device("cpu")).numel() > 2000


def test_optimizer_uses_the_triton_kernel_when_asked(monkeypatch):
    import ngp
    from ngp.optim import _adam_kernel_for

    monkeypatch.setenv("NGP_BACKEND", "triton")
    tensors = tuple(torch.zeros(8) for _ in range(4))
    assert _adam_kernel_for(tensors) is triton_adam.adam_step_
    assert _adam_kernel_for(tuple(t.double() for t in tensors)) is reference_adam.adam_step_  # float32 only
    monkeypatch.setenv("NGP_BACKEND", "auto")
    assert _adam_kernel_for(tensors) is not triton_adam.adam_step_  # CPU tensors: Numba

    # and a whole optimizer step through it equals the reference's
    monkeypatch.setenv("NGP_BACKEND", "triton")
    torch.manual_seed(0)
    model = ngp.NetworkWithInputEncoding(2, 1, {"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 6,
                                                "base_resolution": 4}, {"otype": "MLP", "n_neurons": 16})
    reference = __import__("copy").deepcopy(model)
    x = torch.rand(32, 2)
    for m, backend in ((model, "triton"), (reference, "reference")):
        monkeypatch.setenv("NGP_BACKEND", backend)
        opt = ngp.build_optimizer({"otype": "Adam", "learning_rate": 1e-2, "l2_reg": 1e-4}, m)
        for _ in range(2):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sparse", [False, True])
def test_kernel_compiles_for_an_h100_without_a_gpu(monkeypatch, sparse):
    """The interpreter accepts code the compiler rejects: compile to sm_90 with Triton's own ptxas."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    import triton

    from ngp.kernels.triton import kernels_for_mode

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:  # pragma: no cover - depends on the Triton version
        pytest.skip(f"this Triton has no offline compile API: {exc}")
    fn = kernels_for_mode(triton_adam.__name__)._adam_kernel
    types = {"param_ptr": "*fp32", "grad_ptr": "*fp32", "m_ptr": "*fp32", "v_ptr": "*fp32",
             "steps_ptr": "*i32" if sparse else "*fp32", "corrections_ptr": "*fp32", "n": "i32",
             "lr": "fp32", "beta1": "fp32", "beta2": "fp32", "eps": "fp32", "l2_reg": "fp32"}
    signature = {arg: types.get(arg, "constexpr") for arg in fn.arg_names}
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs={"SPARSE": sparse, "BLOCK": 1024}),
                            target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": True})
    assert len(kernel.asm["cubin"]) > 0
    # One pass over memory: every element of each array read once and each written array stored once
    # (dense reads grad, param, m, v and writes m, v, param; tables also read and write their step
    # counts and read the bias-correction lookup).
    threads = kernel.metadata.num_warps * 32
    loads, stores = (6, 4) if sparse else (4, 3)
    assert _global_words(kernel.asm["ptx"], "ld") * threads == loads * 1024
    assert _global_words(kernel.asm["ptx"], "st") * threads == stores * 1024


def _global_words(ptx: str, op: str) -> int:
    """32-bit words one thread moves with ``op`` (``ld``/``st``) ``.global`` instructions in ``ptx``
    (a ``.v2``/``.v4`` vector instruction moves 2/4)."""
    import re

    words = 0
    for suffix in re.findall(rf"\b{op}\.global((?:\.[\w:]+)*)", ptx):
        parts = suffix.split(".")
        assert parts[-1] in ("b32", "f32", "u32", "s32"), f"unexpected {op}.global{suffix} in a float32 kernel"
        words += next((int(p[1:]) for p in parts if p in ("v2", "v4", "v8")), 1)
    return words


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the GPU machine)")
@pytest.mark.parametrize("sparse", [False, True])
def test_cuda_kernel_matches_reference(monkeypatch, sparse):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(1 << 20, generator=g) for _ in range(3)]
    start[2] = start[2].abs()
    expected = _run(reference_adam.adam_step_, start, (1, 2, 3), sparse, 1e-3)
    p, m, v = (t.cuda() for t in start)
    counts = torch.zeros(1 << 20, dtype=torch.int32, device="cuda")
    gen = torch.Generator().manual_seed(1)  # the grads _run draws
    for step in (1, 2, 3):
        grad = torch.randn(1 << 20, generator=gen)
        grad[step::3] = 0
        triton_adam.adam_step_(p, grad.cuda(), m, v, step, 0.01, 0.9, 0.99, 1e-15, 1e-3, counts if sparse else None)
    for a, b in zip(expected, (p, m, v, counts)):
        torch.testing.assert_close(b.cpu(), a, rtol=2e-5, atol=1e-6)


def test_a_mixed_precision_training_loop_matches_the_reference(monkeypatch):
    """What a GPU run does by default, on the CPU: float16 table storage, float16 MLP under autocast
    with loss scaling, the Triton encoding and Adam kernels; against the same loop on the reference."""
    import copy

    import ngp
    from ngp.train.precision import MixedPrecision

    torch.manual_seed(0)
    encoding = {"otype": "HashGrid", "n_levels": 3, "log2_hashmap_size": 8, "base_resolution": 4,
                "storage_dtype": "float16"}
    model = ngp.NetworkWithInputEncoding(3, 2, encoding, {"otype": "MLP", "n_neurons": 16})
    reference = copy.deepcopy(model)
    x = torch.rand(128, 3, generator=torch.Generator().manual_seed(1))
    target = torch.stack([x.sum(1), x[:, 0] * x[:, 1]], dim=1)
    results = []
    for m, backend in ((model, "triton"), (reference, "reference")):
        monkeypatch.setenv("NGP_BACKEND", backend)
        opt = ngp.build_optimizer({"otype": "Adam", "learning_rate": 1e-2}, m)
        amp = MixedPrecision("cpu", "float16")
        losses = []
        for _ in range(4):
            opt.zero_grad()
            with amp.autocast():
                prediction = m(x)
            loss = torch.nn.functional.mse_loss(prediction, target)
            assert amp.backward_and_step(loss, opt)
            losses.append(loss.item())
        results.append(losses)
    assert results[0][-1] < results[0][0]
    torch.testing.assert_close(results[0], results[1], rtol=1e-3, atol=1e-5)
    assert model.encoding.table.dtype == torch.float32
    torch.testing.assert_close(model.encoding.table, reference.encoding.table, rtol=1e-3, atol=1e-6)
