"""MLPs, losses, the paper's Adam (L2 on network weights only, sparse table updates), EMA, decay."""

import math

import pytest
import torch

import ngp
from ngp.kernels.cpu import adam as cpu_adam
from ngp.kernels.reference import adam as reference_adam
from ngp.losses import build_loss
from ngp.optim import ExponentialDecay, split_parameters


def test_mlp_structure_matches_config():
    net = ngp.Network(32, 3, {"otype": "CutlassMLP", "n_neurons": 16, "n_hidden_layers": 3,
                              "activation": "Tanh", "output_activation": "Sigmoid"})
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(l.weight.shape) for l in linears] == [(16, 32), (16, 16), (16, 16), (3, 16)]
    assert all(l.bias is None for l in linears)
    out = net(torch.randn(100, 32))
    assert out.shape == (100, 3) and out.min() >= 0 and out.max() <= 1


def test_network_rejects_wrong_width():
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        ngp.Network(8, 1, {"otype": "FullyFusedMLP"})(torch.randn(2, 7))


def test_padded_row_count_is_close_and_takes_few_sizes():
    from ngp.networks import PAD_ROWS_MIN, padded_row_count

    assert [padded_row_count(n) for n in (0, 1, PAD_ROWS_MIN - 1)] == [0, 1, PAD_ROWS_MIN - 1]
    sizes = set()
    for n in range(65536, 131072, 97):
        rows = padded_row_count(n)
        assert n <= rows <= 1.125 * n
        sizes.add(rows)
    assert sizes == set(range(65536, 131072 + 1, 8192))  # 8 sizes per power of two (and the next one)


def test_padded_rows_change_no_output_and_no_gradient():
    """Under CPU autocast with gradients, Network pads its input's rows (oneDNN kernels reused): the
    output and the weight gradients are those of the unpadded product chain."""
    from ngp.networks import pad_rows

    net = ngp.Network(32, 16, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 1}, seed=3)
    x = torch.rand(1000, 32, generator=torch.Generator().manual_seed(0))
    g = torch.randn(1000, 16, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pad_rows(x).shape == (1024, 32) and pad_rows(x)[1000:].abs().sum() == 0
        out = net(x)
        (out * g).sum().backward()
        grads = [w.grad.clone() for w in net.parameters()]
        net.zero_grad()
        h = x
        for layer in net.layers[:-1]:  # the same layers, unpadded
            h = layer(h)
        expected = h.float()
        (expected * g).sum().backward()
    assert out.shape == (1000, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)
    for got, want in zip(grads, (w.grad for w in net.parameters())):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    assert pad_rows(x) is x  # float32 (no autocast): nothing padded


@pytest.mark.skipif(ngp.networks._LINEAR_RELU is None, reason="this PyTorch build has no fused oneDNN linear + ReLU")
def test_inference_fuses_linear_and_relu_with_the_same_result(monkeypatch):
    """Without gradients under CPU bfloat16 autocast, each hidden Linear + ReLU is one oneDNN call, with the
    result of the separate product and ReLU; with gradients (training) the layers run as they are."""
    import ngp.networks as networks

    fused = networks._LINEAR_RELU
    calls = []
    monkeypatch.setattr(networks, "_LINEAR_RELU", lambda *args: calls.append(args[0].shape) or fused(*args))
    net = ngp.Network(32, 16, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2}, seed=3)
    x = torch.rand(3000, 32, generator=torch.Generator().manual_seed(0)) - 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            out = net(x)
            assert calls == [(3072, 32), (3072, 64)]  # both hidden layers fused (rows padded), the output layer not
            h = x
            for layer in net.layers[:-1]:  # the same layers one by one
                h = layer(h)
        assert (h > 0).any() and (h < 0).any()  # the ReLUs had work to do
        torch.testing.assert_close(out, h.float(), rtol=0, atol=0)
    calls.clear()
    with torch.no_grad():
        net(x)
    assert calls == []  # float32: plain layers


@pytest.mark.skipif(ngp.networks._LINEAR_RELU is None, reason="this PyTorch build has no fused oneDNN linear + ReLU")
def test_training_fuses_linear_and_relu_with_the_same_gradients(monkeypatch):
    """With gradients under CPU bfloat16 autocast (training) the hidden Linear + ReLU pairs are fused too, and
    the output and every gradient (weights and input) equal those of the separate product and ReLU."""
    from ngp import networks

    fused = networks._LINEAR_RELU
    net = ngp.Network(32, 16, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2}, seed=3)
    x = torch.rand(3000, 32, generator=torch.Generator().manual_seed(0)) - 0.5
    g = torch.randn(3000, 16, generator=torch.Generator().manual_seed(1))

    def run(linear_relu):
        monkeypatch.setattr(networks, "_LINEAR_RELU", linear_relu)
        xi = x.clone().requires_grad_()
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(xi)
        (out * g).sum().backward()
        return [out, xi.grad] + [p.grad.clone() for p in net.parameters()]

    calls = []
    got = run(lambda *args: calls.append(args[0].shape) or fused(*args))
    assert calls == [(3072, 32), (3072, 64)]  # both hidden layers fused (rows padded), the output layer not
    want = run(None)  # the separate product and in-place ReLU
    assert all(t.abs().sum() > 0 for t in want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.skipif(ngp.networks._LINEAR_RELU is None, reason="this PyTorch build has no fused oneDNN linear + ReLU")
def test_bfloat16_weights_are_kept_only_within_their_context(monkeypatch):
    """Within bfloat16_weights_kept() (rendering a frame) the fused layers convert each weight once; outside it
    every call sees the weight as it is now, however it was changed: the Numba Adam writes through NumPy
    views and .data assignments bump no version counter."""
    import ngp.networks as networks

    net = ngp.Network(32, 16, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2}, seed=3)
    x = torch.rand(500, 32, generator=torch.Generator().manual_seed(0)) - 0.5

    def fused_and_plain():
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            out, h = net(x), x
            for layer in net.layers[:-1]:
                h = layer(h)
        return out, h.float()

    conversions = []
    convert = networks._bfloat16_weight
    monkeypatch.setattr(networks, "_bfloat16_weight", lambda layer: conversions.append(layer) or convert(layer))
    with networks.bfloat16_weights_kept():
        first, _ = fused_and_plain()
        kept = dict(networks._KEPT.weights)
        with networks.bfloat16_weights_kept():  # nested: the same kept weights
            assert fused_and_plain()[0].equal(first) and networks._KEPT.weights.keys() == kept.keys()
        assert len(kept) == 2 and all(networks._KEPT.weights[k][1] is v[1] for k, v in kept.items())
    assert networks._KEPT.weights is None and len(conversions) == 4  # two layers, two calls
    weight = net.layers[0].weight
    steps = torch.zeros_like(weight, dtype=torch.int32)
    cpu_adam.adam_step_(weight, torch.ones_like(weight), torch.zeros_like(weight), torch.zeros_like(weight), 1, 0.5,
                        0.9, 0.99, 1e-15, 0.0, steps)  # through NumPy: the version stays
    out, plain = fused_and_plain()
    assert not out.equal(first) and out.equal(plain)
    net.layers[2].weight.data = net.layers[2].weight.data * -1.0
    changed, plain = fused_and_plain()
    assert not changed.equal(out) and changed.equal(plain)


def test_losses_against_closed_forms():
    pred, target = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    assert build_loss({"otype": "L2"})(pred, target).item() == pytest.approx((1 + 4) / 2)
    assert build_loss({"otype": "L1"})(pred, target).item() == pytest.approx(1.5)
    assert build_loss({"otype": "MAPE"})(pred, target).item() == pytest.approx((1 / 0.01 + 2 / 4.01) / 2)
    assert build_loss({"otype": "RelativeL2"})(pred, target).item() == pytest.approx((1 / 1.01 + 4 / 4.01) / 2)
    small = build_loss({"otype": "Huber", "delta": 1.0})(torch.tensor([0.5]), torch.tensor([0.0]))
    assert small.item() == pytest.approx(0.125)
    large = build_loss({"otype": "Huber", "delta": 0.1})(torch.tensor([2.0]), torch.tensor([0.0]))
    assert large.item() == pytest.approx((2.0 - 0.05) * 0.1 / 0.1)


def model_and_optimizer(config=None):
    torch.manual_seed(0)
    model = ngp.NetworkWithInputEncoding(2, 1, {"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 8},
                                         {"otype": "FullyFusedMLP", "n_neurons": 8, "n_hidden_layers": 1})
    return model, ngp.build_optimizer(config or {"otype": "Adam", "learning_rate": 1e-2, "l2_reg": 0.5}, model)


def test_adam_uses_paper_settings_and_l2_only_on_network_weights():
    model, opt = model_and_optimizer()
    enc_params, net_params = split_parameters(model)
    assert enc_params == [model.encoding.table] and len(net_params) == 2
    groups = {id(g["params"][0]): g for g in opt.adam.param_groups}
    table_group, net_group = groups[id(model.encoding.table)], groups[id(net_params[0])]
    assert table_group["l2_reg"] == 0.0 and table_group["skip_zero_grads"]
    assert net_group["l2_reg"] == 0.5 and not net_group["skip_zero_grads"]
    assert opt.adam.defaults["betas"] == (0.9, 0.99) and opt.adam.defaults["eps"] == 1e-15


def test_untouched_table_rows_do_not_move():
    model, opt = model_and_optimizer()
    x = torch.full((4, 2), 0.01)  # touches only a few rows of each level
    for _ in range(3):
        opt.zero_grad()
        model(x).square().sum().backward()
        touched = model.encoding.table.grad.abs().sum(1) != 0
        before = model.encoding.table.detach().clone()
        opt.step()
        moved = (model.encoding.table.detach() != before).any(1)
        assert torch.equal(moved, touched) and 0 < touched.sum() < len(touched)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("l2", [0.0, 1e-3])
def test_numba_adam_matches_reference(sparse, l2):
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(1000, generator=g, dtype=torch.float64) for _ in range(3)]
    start[2] = start[2].abs()
    states = [[t.clone() for t in start] + [torch.zeros(1000, dtype=torch.int32)] for _ in range(2)]
    for step in (1, 2, 3):
        grad = torch.randn(1000, generator=g, dtype=torch.float64)
        grad[step::3] = 0  # different rows untouched each step: per-entry step counts diverge
        for fn, (p, m, v, n) in zip((reference_adam.adam_step_, cpu_adam.adam_step_), states):
            fn(p, grad, m, v, step, 0.01, 0.9, 0.99, 1e-15, l2, n if sparse else None)
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.equal(states[0][0], start[0])
    if sparse:
        assert set(states[0][3].tolist()) == {2, 3}  # row 0 is never zeroed


def test_first_adam_step_moves_each_weight_by_lr():
    # With bias correction the first step is lr * g / |g| = lr * sign(g) for every weight.
    model, opt = model_and_optimizer({"otype": "Adam", "learning_rate": 0.05, "l2_reg": 0.0})
    weight = model.network.layers[0].weight
    before = weight.detach().clone()
    opt.zero_grad()
    model(torch.rand(64, 2)).sum().backward()
    grad = weight.grad.clone()
    opt.step()
    torch.testing.assert_close(weight.detach() - before, -0.05 * grad.sign(), rtol=1e-4, atol=1e-7)


def test_exponential_decay_schedule():
    decay = ExponentialDecay(decay_start=100, decay_interval=50, decay_base=0.5, decay_end=250)
    assert [decay.factor(s) for s in (0, 99, 100, 149, 150, 250, 10_000)] == [1, 1, 0.5, 0.5, 0.25, 0.0625, 0.0625]
    model, opt = model_and_optimizer({"otype": "ExponentialDecay", "decay_start": 1, "decay_interval": 1,
                                      "decay_base": 0.1, "nested": {"otype": "Adam", "learning_rate": 1.0}})
    assert opt.learning_rate == 1.0
    opt.n_steps = 2
    assert opt.learning_rate == pytest.approx(0.01)


def test_ema_weights_are_the_bias_corrected_average():
    model, opt = model_and_optimizer({"otype": "Ema", "decay": 0.5, "nested": {"otype": "Adam"}})
    weight = model.network.layers[0].weight
    history = []
    for _ in range(3):
        opt.zero_grad()
        model(torch.rand(16, 2)).sum().backward()
        opt.step()
        history.append(weight.detach().clone())
    expected = (0.25 * history[0] + 0.5 * history[1] + 1.0 * history[2]) / 1.75
    live = weight.detach().clone()
    with opt.averaged_weights():
        torch.testing.assert_close(weight.detach(), expected)
    assert torch.equal(weight.detach(), live)



def test_ema_of_the_tables_moves_within_adams_pass(monkeypatch):
    """The hash table's average takes its EMA step inside the Numba Adam pass (one read of the table less):
    every weight's average is the one the separate EMA update gives, and the table's went through Adam."""
    from ngp.optim import ExponentialMovingAverage

    def run(fused: bool):
        torch.manual_seed(0)
        model, opt = model_and_optimizer({"otype": "Ema", "decay": 0.9, "nested": {"otype": "Adam"}})
        if not fused:
            monkeypatch.setattr(ExponentialMovingAverage, "targets", lambda self: {})
        calls = []
        kernel = cpu_adam.adam_step_
        monkeypatch.setattr(cpu_adam, "adam_step_", lambda *a, **k: calls.append("average" in k) or kernel(*a, **k))
        x = torch.rand(64, 2, generator=torch.Generator().manual_seed(1))
        for _ in range(4):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
        monkeypatch.undo()
        return [avg.clone() for avg in opt.ema.averages], calls

    fused, fused_calls = run(True)
    separate, separate_calls = run(False)
    assert any(fused_calls) and not any(separate_calls)  # the table (sparse) fused, the MLP weights not
    assert all(avg.abs().sum() > 0 for avg in separate)
    for a, b in zip(fused, separate):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    weight = torch.zeros(4)
    with pytest.raises(ValueError, match="sparse step"):  # the dense step would leave the average alone
        cpu_adam.adam_step_(weight, torch.ones(4), torch.zeros(4), torch.zeros(4), 1, 0.1, 0.9, 0.99, 1e-15, 0.0,
                            average=torch.zeros(4), average_weight=0.1)

def test_training_reduces_loss():
    model, opt = model_and_optimizer({"otype": "Adam", "learning_rate": 1e-2})
    x = torch.rand(2048, 2)
    target = torch.sin(6 * x[:, :1]) * torch.cos(4 * x[:, 1:])
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = (model(x) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert math.isfinite(losses[-1])


@pytest.mark.parametrize("output_activation", ["None", "Sigmoid"])
def test_out_dtype_is_the_usual_output_rounded(output_activation):
    """Network(x, out_dtype=...) (rendering hands low-precision outputs on) holds exactly the float32
    output rounded: under bfloat16 autocast (the last product's own result when the output activation
    is the identity) and in float32."""
    net = ngp.Network(32, 16, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2,
                               "output_activation": output_activation}, seed=5)
    x = torch.rand(700, 32, generator=torch.Generator().manual_seed(1)) - 0.5
    with torch.no_grad():
        for autocast in (True, False):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                usual, rounded = net(x), net(x, out_dtype=torch.bfloat16)
            assert usual.dtype == torch.float32 and rounded.dtype == torch.bfloat16
            assert torch.equal(rounded, usual.to(torch.bfloat16))
            assert autocast or not torch.equal(rounded.float(), usual)  # float32: rounded indeed


def test_inference_in_chunks_of_rows_gives_the_same_output(monkeypatch):
    """Without gradients under autocast a network runs INFERENCE_CHUNK_ROWS rows at a time (the
    activations stay in the caches), each chunk padded to one of the few row counts oneDNN keeps kernels
    for: the output is the whole batch's, bit for bit, the last chunk partial."""
    import ngp.networks as networks

    net = ngp.Network(32, 16, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2}, seed=4)
    x = torch.rand(2500, 32, generator=torch.Generator().manual_seed(2)) - 0.5
    sizes = []
    run_layers = networks.run_layers
    monkeypatch.setattr(networks, "run_layers", lambda layers, x: sizes.append(x.shape[0]) or run_layers(layers, x))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        monkeypatch.setattr(networks, "INFERENCE_CHUNK_ROWS", 1024)
        chunked = net(x)
        assert sizes == [1024, 1024, 480]  # 452 rows padded to 480 (one of 8 sizes in 256..511)
        sizes.clear()
        small = net(x[:37])
        assert sizes == [networks.PAD_ROWS_MIN] and torch.equal(small, net(x)[:37])  # few rows: padded to the minimum
        assert net(x[:0]).shape == (0, 16)  # no rows: an empty result
        monkeypatch.setattr(networks, "INFERENCE_CHUNK_ROWS", 1 << 30)
        whole = net(x)
    assert torch.equal(chunked, whole) and chunked.shape == (2500, 16)
    assert networks.padded_row_count(452) == 480 and networks.padded_row_count(37) == 37
    assert networks.padded_row_count(37, 256) == 256


def test_a_step_of_the_compiled_adam_is_seen_by_autograd():
    """The Numba Adam writes through NumPy views; the step still counts as an in-place change, so a graph
    that saved the old weights refuses its backward (as after torch.optim.Adam) instead of mixing them."""
    from ngp.optim import Adam, _adam_kernel_for

    weight = torch.nn.Parameter(torch.rand(8, 4))
    assert _adam_kernel_for((weight,) * 4) is cpu_adam.adam_step_
    optimizer = Adam([weight], lr=1e-2)
    x = torch.rand(16, 4)
    (x @ weight.t()).sum().backward()
    version = weight._version
    loss = (x.requires_grad_() @ weight.t()).square().sum()  # saves the weight (for x's gradient)
    optimizer.step()
    assert weight._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
