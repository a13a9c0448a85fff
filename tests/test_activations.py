"""ngp.ops.activations: the ReLU backward kernel against its plain definition (autograd's)."""

import pytest
import torch

from ngp import networks
from ngp.kernels.cpu import activations as kernels
from ngp.kernels.reference import activations as reference
from ngp.ops.activations import relu_backward


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def test_relu_backward_kernel_matches_autograd_for_every_bfloat16_output():
    # every bfloat16 bit pattern as the ReLU's output: +-0, denormals, +-inf and both signs of NaN decide
    output = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    expected = reference.relu_backward(grad, output)
    assert torch.equal(_bits(kernels.relu_backward(grad, output)), _bits(expected))
    assert torch.equal(_bits(relu_backward(grad, output)), _bits(expected))
    # and that is autograd's backward of relu
    x = output.float().requires_grad_(True)
    torch.relu(x).backward(grad.float())
    finite = ~output.float().isnan()
    assert torch.equal(x.grad[finite], expected.float()[finite])


def test_relu_backward_shapes_dtypes_and_fallbacks():
    g = torch.Generator().manual_seed(1)
    y = torch.relu(torch.randn(1000, 64, generator=g)).to(torch.bfloat16)
    grad = torch.randn(1000, 64, generator=g).to(torch.bfloat16)
    out = relu_backward(grad, y)
    assert out.shape == grad.shape and out.dtype == torch.bfloat16
    assert torch.equal(out, torch.where(y > 0, grad, torch.zeros((), dtype=torch.bfloat16)))
    # float32 and non-contiguous inputs take the reference
    assert torch.equal(relu_backward(grad.float(), y.float()), torch.where(y > 0, grad, 0).float())
    assert torch.equal(relu_backward(grad.t(), y.t()), out.t())
    assert relu_backward(grad[:0], y[:0]).shape == (0, 64)
    with pytest.raises(ValueError, match=r"grad \(1000, 64\) and output \(64, 1000\) must have one shape"):
        relu_backward(grad, y.t())


def test_fused_linear_relu_gradients_equal_the_unfused_layers():
    if networks._LINEAR_RELU is None:
        pytest.skip("this PyTorch build has no fused oneDNN linear + ReLU")
    g = torch.Generator().manual_seed(2)
    layers = torch.nn.Sequential(torch.nn.Linear(32, 64, bias=False), torch.nn.ReLU(),
                                 torch.nn.Linear(64, 64, bias=False), torch.nn.ReLU(),
                                 torch.nn.Linear(64, 16, bias=False))
    x = torch.randn(4096, 32, generator=g)
    grad_out = torch.randn(4096, 16, generator=g)
    grads = []
    for fused in (True, False):
        layers.zero_grad()
        xr = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = networks.run_layers(layers, xr) if fused else layers(xr)
        y.float().backward(grad_out)
        grads.append([xr.grad] + [p.grad for p in layers.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
