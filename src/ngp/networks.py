"""Fully connected networks in tiny-cuda-nn's shape: ``Network`` and ``NetworkWithInputEncoding``."""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ngp.config import ConfigError, otype_of, require_choice, require_int, with_defaults
from ngp.encodings import Encoding
from ngp.encodings.base import Module, seeded_generator
from ngp.ops.activations import relu_backward

#: tiny-cuda-nn's MLP types all mean "an MLP" here; fused/CUTLASS/megakernel are GPU implementation
#: details (instant-ngp also names ``MegakernelMLP``).
NETWORK_OTYPES = ("FullyFusedMLP", "CutlassMLP", "MegakernelMLP", "MLP")
#: tiny-cuda-nn network types that are not a plain MLP (refused, named in the error).
UNSUPPORTED_NETWORKS = ("CutlassResNet",)
NETWORK_DEFAULTS = {
    "n_neurons": 64, "n_hidden_layers": 2, "activation": "ReLU", "output_activation": "None",
    "feedback_alignment": False,  # FullyFusedMLP's option (Lillicrap et al. 2016): only off is supported
}

#: Below this many rows a matrix product's input is not padded (see :func:`pad_rows`).
PAD_ROWS_MIN = 256


def padded_row_count(n: int, minimum: int = 0) -> int:
    """``n`` rounded up to one of 8 sizes per power of two (at most 12.5 % more); below
    :data:`PAD_ROWS_MIN`, ``n`` itself or ``minimum`` if larger."""
    if n < PAD_ROWS_MIN:
        return max(n, minimum)
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


def pad_rows(x: torch.Tensor, minimum: int = 0) -> torch.Tensor:
    """``x [N, k]`` with zero rows appended up to :func:`padded_row_count` when its matrix products will
    run in bfloat16/float16 on a CPU (under autocast); else ``x`` itself. The caller keeps the first
    ``N`` rows of the result (zero rows add nothing to weight gradients). A padded float32 ``x`` comes
    back in the autocast dtype: only a matrix product under autocast may take the result.

    Why: on a CPU those products run through oneDNN, which builds and compiles a kernel for every new
    shape and keeps the last 256 (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, set by ``import ngp``); NeRF's
    batches change size every step and every pre-pass round, so nearly every product paid ~0.4 ms for
    a new kernel (measured: a [65536..69536, 64] x [64, 64] bfloat16 product 0.34-0.63 ms with one
    size, 0.72-1.2 ms with a new size each call). With a few sizes per power of two the kernels are
    reused. Used by training (:class:`Network` with gradients, the NeRF pre-pass) and rendering (each
    chunk of :data:`INFERENCE_CHUNK_ROWS` rows: the last of a round, and any below ``minimum`` rows, would
    otherwise be a new shape every round).
    """
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or x.dim() != 2:
        return x
    rows = padded_row_count(x.shape[0], minimum)
    if rows == x.shape[0]:
        return x
    if x.dtype != torch.float32:
        return torch.nn.functional.pad(x, (0, 0, 0, rows - x.shape[0]))
    # float32 is padded in the autocast dtype: the copy that pads also converts, where padding and then
    # autocast's conversion before the product made two passes (the same numbers; differentiable)
    out = x.new_empty(rows, x.shape[1], dtype=torch.get_autocast_dtype("cpu"))
    out[x.shape[0]:].zero_()
    out[:x.shape[0]] = x
    return out


#: Without gradients under CPU autocast (rendering) a network runs on at most this many rows at a time:
#: each layer's activations (32768 x 64 bfloat16, 4 MB) stay in the caches for the next layer, where a
#: whole round's 2^18 rows (33 MB per layer) went to memory and back. Measured (2 cores, 10-minute
#: runs, alternating in one process, the same pictures): fox frames 6.65 -> 6.34 s (medians of 4),
#: lego 1.42 -> 1.34 s (16384 rows, medians of 6).
INFERENCE_CHUNK_ROWS = 32768

ACTIVATIONS = {
    "None": nn.Identity,
    # in place: the activation overwrites the product it follows, which nothing else keeps (a matrix
    # product saves its input, not its output), so no new [N, width] buffer per layer
    "ReLU": lambda: nn.ReLU(inplace=True),
    "LeakyReLU": lambda: nn.LeakyReLU(0.01, inplace=True),
    "Exponential": lambda: _Lambda(torch.exp),
    "Sine": lambda: _Lambda(torch.sin),
    "Sigmoid": nn.Sigmoid,
    # tiny-cuda-nn's sharpened versions: X = 10 x, f(X) / 10
    "Squareplus": lambda: _Lambda(lambda x: 0.05 * (10.0 * x + torch.sqrt(100.0 * x * x + 4.0))),
    "Softplus": lambda: nn.Softplus(beta=10.0),
    "Tanh": nn.Tanh,
}


def _fused_linear_relu():
    """oneDNN's matrix product with the ReLU applied as it writes the result (the op PyTorch's compiler
    uses for frozen CPU models), or None where this build of PyTorch lacks it."""
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_LINEAR_RELU = _fused_linear_relu()


class _LinearReLU(torch.autograd.Function):
    """``relu(x @ weight.T)`` of bfloat16 ``x [N, k]`` and ``weight [m, k]`` in one oneDNN call, with the
    backward autograd makes of the separate product and in-place ReLU (the same products, so the same
    gradients bit for bit): training's forward no longer writes and re-reads each ``[N, 64]`` product
    for its ReLU."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        y = _LINEAR_RELU(x, weight, None, "relu", [], "")
        ctx.save_for_backward(x, weight, y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, y = ctx.saved_tensors
        grad = relu_backward(grad, y)  # ReLU's backward, as autograd's for relu_ (a Numba kernel in bfloat16)
        grad_x = grad.mm(weight) if ctx.needs_input_grad[0] else None
        grad_weight = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight


def cpu_bfloat16_autocast(x: torch.Tensor) -> bool:
    """Whether work on ``x`` runs under CPU autocast in bfloat16 (training's and rendering's precision on
    CPUs with bfloat16 instructions), where the kernels may hand on bfloat16 results directly."""
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def run_layers(layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``x`` through ``layers`` in turn; in CPU bfloat16 autocast each ``Linear`` followed by a ``ReLU``
    runs as one fused oneDNN call, bit for bit the same result (and, with gradients, the same gradients:
    :class:`_LinearReLU`): the separate ReLU pass over every ``[N, 64]`` product cost a fox frame 0.26 of
    7.3 s, and a late lego training step's forward 14.4 of 124 ms against 9.6 ms fused (measured).
    """
    modules = list(layers)
    fuse = _LINEAR_RELU is not None and cpu_bfloat16_autocast(x)
    grad = torch.is_grad_enabled()
    i = 0
    while i < len(modules):
        layer = modules[i]
        fusable = (fuse and isinstance(layer, nn.Linear) and layer.bias is None and i + 1 < len(modules)
                   and isinstance(modules[i + 1], nn.ReLU))
        if fusable and grad:
            # the casts autocast's product would make, left to autograd (their backward converts the gradients)
            x = _LinearReLU.apply(x.to(torch.bfloat16), layer.weight.to(torch.bfloat16))
            i += 2
        elif fusable:
            x = _LINEAR_RELU(x.to(torch.bfloat16), _bfloat16_weight(layer), None, "relu", [], "")
            i += 2
        else:
            x = layer(x)
            i += 1
    return x


_KEPT = threading.local()  # per thread: a viewer may render in one thread while another trains


@contextlib.contextmanager
def bfloat16_weights_kept() -> Iterator[None]:
    """Within this context (in this thread) the fused layers of :func:`run_layers` convert each weight to
    bfloat16 once and keep it: for work during which no weight changes, such as rendering a frame, which
    calls each layer once per chunk of rows and round (hundreds of conversions). Outside it every call
    converts: weights change in ways no version counter sees (``.data`` assignments, kernels writing
    through raw views: this project's Adam bumps the version after its step, others may not)."""
    if getattr(_KEPT, "weights", None) is not None:  # nested: the outer context keeps them
        yield
        return
    _KEPT.weights = {}
    try:
        yield
    finally:
        _KEPT.weights = None


def _bfloat16_weight(layer: nn.Linear) -> torch.Tensor:
    """``layer.weight`` in bfloat16, kept within :func:`bfloat16_weights_kept`."""
    kept = getattr(_KEPT, "weights", None)
    if kept is None:
        return layer.weight.to(torch.bfloat16)
    weight = layer.weight
    entry = kept.get(id(weight))
    if entry is None or entry[0] is not weight:  # the weight is kept with its copy: its id is not reused
        entry = kept[id(weight)] = (weight, weight.detach().to(torch.bfloat16))
    return entry[1]


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Network(Module):
    """A multilayer perceptron ``[N, n_input_dims] -> [N, n_output_dims]``.

    Like tiny-cuda-nn's MLPs: ``n_hidden_layers`` hidden layers of ``n_neurons`` (0: one linear
    map), ``activation`` after each, ``output_activation`` at the end, no biases (a learned encoding
    makes them redundant), weights initialised Xavier-uniform (from ``seed`` when given, as
    tiny-cuda-nn's ``Network(n_input_dims, n_output_dims, network_config, seed=1337)``; ``None``: from
    torch's global RNG). Output float32 (tiny-cuda-nn's is float16 on most GPUs).

    Example:
        >>> net = Network(32, 3, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2})
        >>> net(torch.rand(8, 32)).shape
        torch.Size([8, 3])
    """

    def __init__(self, n_input_dims: int, n_output_dims: int, network_config: Mapping[str, Any] | None = None,
                 seed: int | None = None):
        super().__init__()
        config = dict(network_config or {"otype": "FullyFusedMLP"})
        otype = otype_of(config, "network")
        if otype.lower() in (name.lower() for name in UNSUPPORTED_NETWORKS):
            raise ConfigError(f"network otype {otype!r} is not supported (its residual blocks are not "
                              f"implemented); use one of {list(NETWORK_OTYPES)}")
        otype = require_choice(otype, NETWORK_OTYPES, "otype", "network")
        what = f"network {otype!r}"
        config = with_defaults(config, NETWORK_DEFAULTS, what)
        if config["feedback_alignment"] is not False:
            raise ConfigError(f"{what}: feedback_alignment={config['feedback_alignment']!r} is not supported "
                              "(only false)")
        self.seed = seed
        generator = seeded_generator(seed)
        self.n_input_dims = require_int(n_input_dims, "n_input_dims", what, 1)
        self.n_output_dims = require_int(n_output_dims, "n_output_dims", what, 1)
        width = require_int(config["n_neurons"], "n_neurons", what, 1)
        depth = require_int(config["n_hidden_layers"], "n_hidden_layers", what, 0)
        activation = require_choice(config["activation"], ACTIVATIONS, "activation", what)
        output_activation = require_choice(config["output_activation"], ACTIVATIONS, "output_activation", what)
        sizes = [n_input_dims] + [width] * depth + [n_output_dims]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out, bias=False))
            bound = math.sqrt(6 / (fan_in + fan_out))
            nn.init.uniform_(layers[-1].weight, -bound, bound, generator=generator)
            last = i == len(sizes) - 2
            layers.append(ACTIVATIONS[output_activation if last else activation]())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``x [N, n_input_dims]`` -> ``[N, n_output_dims]``: float32 under autocast (else x's dtype),
        or ``out_dtype``: the same numbers rounded to it (under autocast with an identity output
        activation, the last product's low-precision result as it is, with no float32 copy)."""
        if x.dim() != 2 or x.shape[1] != self.n_input_dims:
            raise ValueError(f"Network expects input of shape [N, {self.n_input_dims}], got {list(x.shape)}")
        if not torch.is_autocast_enabled(x.device.type):
            y = self.layers(x)
            return y if out_dtype is None else y.to(out_dtype)
        # Under autocast (mixed precision) the matrix products run in float16; the output activation
        # and whatever follows (exp of a log-density, losses) must not: exp overflows float16 at 11.
        *body, output_activation = self.layers
        n = x.shape[0]
        if torch.is_grad_enabled():  # training
            x = run_layers(body, pad_rows(x))
        elif x.device.type == "cpu":  # a GPU wants its rows at once
            parts = [run_layers(body, pad_rows(part, minimum=PAD_ROWS_MIN))[:part.shape[0]]
                     for part in x.split(INFERENCE_CHUNK_ROWS)]
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
        else:
            x = run_layers(body, x)
        if out_dtype is not None and x.dtype == out_dtype and isinstance(output_activation, nn.Identity):
            return x[:n]
        y = output_activation(x[:n].float())
        return y if out_dtype is None else y.to(out_dtype)


class NetworkWithInputEncoding(Module):
    """``Network(Encoding(x))`` in one module: ``[N, n_input_dims] -> [N, n_output_dims]``, with
    tiny-cuda-nn's signature ``(n_input_dims, n_output_dims, encoding_config, network_config, seed)``.

    Example:
        >>> model = NetworkWithInputEncoding(2, 3, {"otype": "HashGrid"}, {"otype": "FullyFusedMLP"})
        >>> model(torch.rand(8, 2)).shape
        torch.Size([8, 3])
    """

    def __init__(
        self,
        n_input_dims: int,
        n_output_dims: int,
        encoding_config: Mapping[str, Any],
        network_config: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        self.encoding = Encoding(n_input_dims, encoding_config, seed=seed)
        self.network = Network(self.encoding.n_output_dims, n_output_dims, network_config, seed=seed)
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_output_dims
        self.seed = seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoding(x)
        return self.network(features.to(self.network.layers[0].weight.dtype))

