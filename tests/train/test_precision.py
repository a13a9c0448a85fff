"""Device choice and mixed precision (``ngp.train.precision``), exercised on the CPU.

float16 autocast and loss scaling run on CPU tensors too, so the code path the GPU takes by default
(``precision="auto"`` on CUDA) is checked here without a GPU.
"""

from __future__ import annotations

import copy

import pytest
import torch

import ngp
from ngp.optim import build_optimizer
from ngp.train.precision import MixedPrecision, resolve_device, resolve_precision

ENCODING = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
            "base_resolution": 4, "per_level_scale": 2.0}
NETWORK = {"otype": "FullyFusedMLP", "n_neurons": 32, "n_hidden_layers": 2}


def _problem(seed=0):
    torch.manual_seed(seed)
    model = ngp.NetworkWithInputEncoding(2, 3, ENCODING, NETWORK)
    optimizer = build_optimizer({"otype": "Adam", "learning_rate": 1e-2}, model)
    x = torch.rand(512, 2, generator=torch.Generator().manual_seed(seed))
    target = torch.stack([torch.sin(6 * x[:, 0]), torch.cos(5 * x[:, 1]), x[:, 0] * x[:, 1]], dim=1)
    return model, optimizer, x, target


def _train(amp, model, optimizer, x, target, steps):
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        with amp.autocast():
            prediction = model(x)
        loss = torch.nn.functional.mse_loss(prediction, target)
        amp.backward_and_step(loss, optimizer)
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------------- device
def test_auto_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["tpu", "gpu0", "mps"])
def test_unknown_device_names_are_rejected(name):
    with pytest.raises(ValueError, match="device"):
        resolve_device(name)


def test_precision_auto_is_float16_on_cuda_only():
    assert resolve_precision("auto", torch.device("cpu")) == "float32"
    assert resolve_precision("auto", torch.device("cuda")) == "float16"
    assert resolve_precision("bfloat16", torch.device("cpu")) == "bfloat16"
    with pytest.raises(ValueError, match="precision 'half'"):
        resolve_precision("half", torch.device("cpu"))


# ------------------------------------------------------------------------------------ mixed precision
def test_float32_is_exactly_the_plain_step():
    model_a, opt_a, x, target = _problem()
    model_b, opt_b = copy.deepcopy(model_a), None
    opt_b = build_optimizer({"otype": "Adam", "learning_rate": 1e-2}, model_b)
    amp = MixedPrecision("cpu", "float32")
    assert not amp.enabled and not amp.scaler.is_enabled() and amp.loss_scale == 1.0
    _train(amp, model_a, opt_a, x, target, 3)
    for _ in range(3):
        opt_b.zero_grad()
        torch.nn.functional.mse_loss(model_b(x), target).backward()
        opt_b.step()
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_mixed_precision_trains_with_float32_parameters(precision):
    model, optimizer, x, target = _problem()
    reference_model, reference_opt, _, _ = _problem()
    amp = MixedPrecision("cpu", precision)
    losses = _train(amp, model, optimizer, x, target, 60)
    reference = _train(MixedPrecision("cpu", "float32"), reference_model, reference_opt, x, target, 60)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < 0.2 * losses[0]
    # the same problem in float32 gets about as far: mixed precision costs little accuracy here
    assert losses[-1] < 2.0 * reference[-1] + 1e-3
    assert amp.skipped_steps == 0


def test_the_mlp_output_leaves_autocast_in_float32():
    # exp(12) overflows float16 (max 65504) but not float32: the activation must run in float32
    net = ngp.Network(4, 1, {"otype": "MLP", "n_neurons": 8, "n_hidden_layers": 1, "activation": "None",
                             "output_activation": "Exponential"})
    with torch.no_grad():
        net.layers[0].weight.fill_(1.0)
        net.layers[2].weight.fill_(12.0 / 32)
    x = torch.ones(2, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        y = net(x)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all() and y.min() > 1e5


def test_an_overflowing_step_is_skipped_and_the_scale_halves():
    model, optimizer, x, target = _problem()
    amp = MixedPrecision("cpu", "float16")
    _train(amp, model, optimizer, x, target, 2)
    before = [p.detach().clone() for p in model.parameters()]
    steps, scale = optimizer.n_steps, amp.loss_scale

    optimizer.zero_grad()
    with amp.autocast():
        prediction = model(x)
    loss = torch.nn.functional.mse_loss(prediction, target) * float("inf")  # an overflow
    assert amp.backward_and_step(loss, optimizer) is False

    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert optimizer.n_steps == steps and amp.skipped_steps == 1
    assert amp.loss_scale == scale / 2
    # and training goes on from there
    _train(amp, model, optimizer, x, target, 1)
    assert optimizer.n_steps == steps + 1
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_gradients_reach_adam_unscaled():
    # Adam's first step moves every touched weight by about lr whatever the gradient's scale, so look
    # at the gradients themselves: after backward_and_step they must be the true ones, not x128
    model, optimizer, x, target = _problem()
    amp = MixedPrecision("cpu", "float16", init_scale=1024.0)
    seen = {}
    original_step = optimizer.step

    def spy():
        seen["grad"] = model.network.layers[-2].weight.grad.clone()
        original_step()

    optimizer.step = spy
    reference = copy.deepcopy(model)
    optimizer.zero_grad()
    with amp.autocast():
        prediction = model(x)
    amp.backward_and_step(torch.nn.functional.mse_loss(prediction, target), optimizer)
    torch.nn.functional.mse_loss(reference(x), target).backward()
    expected = reference.network.layers[-2].weight.grad
    torch.testing.assert_close(seen["grad"], expected, rtol=0.05, atol=1e-3 * expected.abs().max().item())


def test_scaler_state_round_trips():
    amp = MixedPrecision("cpu", "float16", init_scale=64.0)
    amp.skipped_steps = 3
    other = MixedPrecision("cpu", "float16")
    other.load_state_dict(amp.state_dict())
    assert other.loss_scale == 64.0 and other.skipped_steps == 3


def test_auto_is_bfloat16_on_a_cpu_with_bfloat16_instructions_where_asked(monkeypatch):
    from ngp.train import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "native_bfloat16", lambda device="cpu": True)
    assert resolve_precision("auto", cpu, cpu_bfloat16=True) == "bfloat16"
    assert resolve_precision("auto", cpu) == "float32"  # only primitives that checked their quality
    assert MixedPrecision(cpu, "auto", cpu_bfloat16=True).dtype == torch.bfloat16
    assert resolve_precision("float32", cpu, cpu_bfloat16=True) == "float32"  # an explicit choice stays
    monkeypatch.setattr(precision, "native_bfloat16", lambda device="cpu": False)
    assert resolve_precision("auto", cpu, cpu_bfloat16=True) == "float32"

