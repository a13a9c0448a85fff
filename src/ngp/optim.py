"""The paper's optimiser: Adam (beta=(0.9, 0.99), eps=1e-15), L2 on network weights only,
an optional exponential learning-rate decay and an optional exponential moving average (EMA) of
the weights — built from tiny-cuda-nn's nested optimizer configs::

    {"otype": "Ema", "decay": 0.95, "nested": {"otype": "ExponentialDecay", "decay_start": 20000,
     "decay_interval": 10000, "decay_base": 0.33, "nested": {"otype": "Adam", "learning_rate": 1e-2,
     "beta1": 0.9, "beta2": 0.99, "epsilon": 1e-15, "l2_reg": 1e-6}}}

The innermost optimizer may also be tiny-cuda-nn's ``Lion`` (Chen et al. 2023: the sign of a
momentum blend, decoupled weight decay) or ``SGD`` (with L2), each as tiny-cuda-nn applies it: to all
parameters alike (plain PyTorch; only Adam has compiled kernels). Its other optimizers (``Novograd``,
``Shampoo``, ``Average``, ``Batched``, ``Lookahead``, ``Composite``) are refused by name.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Collection, Iterator, Mapping

import torch
from torch import nn

from ngp.config import ConfigError, otype_of, require_choice, require_float, require_int, with_defaults
from ngp.encodings import Encoding
from ngp.kernels.cpu import adam as cpu_adam
from ngp.kernels.reference import adam as reference_adam
from ngp.kernels import triton as triton_kernels
from ngp.ops.backend import backend_for

ADAM_DEFAULTS = {
    "learning_rate": 1e-2, "beta1": 0.9, "beta2": 0.99, "epsilon": 1e-15, "l2_reg": 1e-6,
    "non_matrix_learning_rate_factor": 1.0, "optimize_matrix_params": True, "optimize_non_matrix_params": True,
    # accepted for tiny-cuda-nn compatibility, only at their neutral values:
    "relative_decay": 0.0, "absolute_decay": 0.0, "clipping_magnitude": 0.0, "adabound": False,
}
DECAY_DEFAULTS = {"decay_start": 0, "decay_interval": 10000, "decay_base": 0.33, "decay_end": 10**12}
LION_DEFAULTS = {"learning_rate": 1e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0}  # tiny-cuda-nn's
SGD_DEFAULTS = {"learning_rate": 1e-3, "l2_reg": 1e-8}  # tiny-cuda-nn's
OPTIMIZER_OTYPES = ("Adam", "Lion", "SGD", "ExponentialDecay", "Ema")
#: tiny-cuda-nn optimizers not implemented here (refused, named in the error).
UNSUPPORTED_OPTIMIZERS = ("Novograd", "Shampoo", "Average", "Batched", "Lookahead", "Composite")


@dataclass
class AdamSettings:
    learning_rate: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    epsilon: float = 1e-15
    l2_reg: float = 1e-6
    encoding_learning_rate_factor: float = 1.0  # tcnn's non_matrix_learning_rate_factor
    optimize_network: bool = True  # tcnn's optimize_matrix_params
    optimize_encoding: bool = True  # tcnn's optimize_non_matrix_params


@dataclass
class ExponentialDecay:
    """``lr * decay_base ** n`` where ``n`` counts the ``decay_interval``s since ``decay_start``."""

    decay_start: int
    decay_interval: int
    decay_base: float
    decay_end: int = 10**12

    def factor(self, step: int) -> float:
        step = min(step, self.decay_end)
        if step < self.decay_start:
            return 1.0
        return self.decay_base ** ((step - self.decay_start) // self.decay_interval + 1)


@dataclass
class LionSettings:
    """tiny-cuda-nn's ``Lion``: ``w -= lr (sign(beta1 m + (1 - beta1) g) + weight_decay w)``, then
    ``m = beta2 m + (1 - beta2) g``."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.0


@dataclass
class SGDSettings:
    """tiny-cuda-nn's ``SGD``: ``w -= lr (g + l2_reg w)``."""

    learning_rate: float = 1e-3
    l2_reg: float = 1e-8


@dataclass
class OptimizerSettings:
    """``base``: the innermost optimizer's settings (Adam, Lion or SGD), wrapped by a learning-rate
    ``decay`` and an ``ema_decay`` when the config nests them."""

    base: AdamSettings | LionSettings | SGDSettings
    decay: ExponentialDecay | None = None
    ema_decay: float | None = None

    @property
    def adam(self) -> AdamSettings | LionSettings | SGDSettings:
        """The same as ``base`` (the name from when Adam was the only choice)."""
        return self.base


def parse_optimizer_config(config: Mapping[str, Any] | None) -> OptimizerSettings:
    """Unwrap ``Ema`` / ``ExponentialDecay`` / ``Adam`` configs (nested in any of those orders)."""
    config = config or {"otype": "Adam"}
    decay, ema = None, None
    while True:
        otype = otype_of(config, "optimizer")
        if otype.lower() in (name.lower() for name in UNSUPPORTED_OPTIMIZERS):
            raise ConfigError(f"optimizer otype {otype!r} is not supported; use one of {list(OPTIMIZER_OTYPES)}")
        otype = require_choice(otype, OPTIMIZER_OTYPES, "otype", "optimizer")
        what = f"optimizer {otype!r}"
        if otype == "Ema":
            c = with_defaults(config, {"decay": 0.99, "nested": None}, what, {"full_precision"})
            ema = require_float(c["decay"], "decay", what, 0.0, 1.0)
        elif otype == "ExponentialDecay":
            c = with_defaults(config, {**DECAY_DEFAULTS, "nested": None}, what)
            decay = ExponentialDecay(
                require_int(c["decay_start"], "decay_start", what, 0),
                require_int(c["decay_interval"], "decay_interval", what, 1),
                require_float(c["decay_base"], "decay_base", what, 0.0),
                require_int(c["decay_end"], "decay_end", what, 0),
            )
        elif otype == "Lion":
            return OptimizerSettings(_parse_lion(config), decay, ema)
        elif otype == "SGD":
            return OptimizerSettings(_parse_sgd(config), decay, ema)
        else:
            return OptimizerSettings(_parse_adam(config), decay, ema)
        if not isinstance(c["nested"], Mapping):
            raise ConfigError(f"{what}: needs a 'nested' optimizer config")
        config = c["nested"]


def _parse_adam(config: Mapping[str, Any]) -> AdamSettings:
    what = "optimizer 'Adam'"
    c = with_defaults(config, ADAM_DEFAULTS, what)
    for key in ("relative_decay", "absolute_decay", "clipping_magnitude"):
        if c[key]:
            raise ConfigError(f"{what}: {key}={c[key]} is not supported (only 0)")
    if c["adabound"]:
        raise ConfigError(f"{what}: adabound=true is not supported")
    return AdamSettings(
        learning_rate=require_float(c["learning_rate"], "learning_rate", what, 0.0),
        beta1=require_float(c["beta1"], "beta1", what, 0.0, 1.0),
        beta2=require_float(c["beta2"], "beta2", what, 0.0, 1.0),
        epsilon=require_float(c["epsilon"], "epsilon", what, 0.0),
        l2_reg=require_float(c["l2_reg"], "l2_reg", what, 0.0),
        encoding_learning_rate_factor=require_float(
            c["non_matrix_learning_rate_factor"], "non_matrix_learning_rate_factor", what, 0.0),
        optimize_network=bool(c["optimize_matrix_params"]),
        optimize_encoding=bool(c["optimize_non_matrix_params"]),
    )


def _parse_lion(config: Mapping[str, Any]) -> LionSettings:
    what = "optimizer 'Lion'"
    c = with_defaults(config, LION_DEFAULTS, what)
    return LionSettings(
        learning_rate=require_float(c["learning_rate"], "learning_rate", what, 0.0),
        beta1=require_float(c["beta1"], "beta1", what, 0.0, 1.0),
        beta2=require_float(c["beta2"], "beta2", what, 0.0, 1.0),
        weight_decay=require_float(c["weight_decay"], "weight_decay", what, 0.0),
    )


def _parse_sgd(config: Mapping[str, Any]) -> SGDSettings:
    what = "optimizer 'SGD'"
    c = with_defaults(config, SGD_DEFAULTS, what)
    return SGDSettings(learning_rate=require_float(c["learning_rate"], "learning_rate", what, 0.0),
                       l2_reg=require_float(c["l2_reg"], "l2_reg", what, 0.0))


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(encoding parameters, other parameters): the former get no L2 and sparse updates."""
    encoding_ids = {id(p) for m in model.modules() if isinstance(m, Encoding) for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if id(p) in encoding_ids], [p for p in params if id(p) not in encoding_ids]


class Adam(torch.optim.Optimizer):
    """Adam as tiny-cuda-nn runs it (see :mod:`ngp.kernels.reference.adam`).

    Param groups carry ``l2_reg``, ``skip_zero_grads`` and ``lr_factor``; :func:`build_optimizer`
    makes one group for encodings (no L2; zero-gradient entries untouched, each entry with its own
    step count) and one for networks (L2).
    """

    def __init__(self, params, lr=1e-2, betas=(0.9, 0.99), eps=1e-15, l2_reg=0.0, skip_zero_grads=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, l2_reg=l2_reg, skip_zero_grads=skip_zero_grads, lr_factor=1.0)
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        # torch casts every loaded state tensor to its parameter's dtype; step counts must stay integers
        for state in self.state.values():
            if "param_steps" in state:
                state["param_steps"] = state["param_steps"].round().to(torch.int32)

    @torch.no_grad()
    def step(self, closure=None, averages: Mapping[int, torch.Tensor] | None = None,
             average_weight: float = 0.0) -> set[int]:
        """One Adam step. ``averages`` (``id(param)`` -> its EMA tensor, see
        :meth:`ExponentialMovingAverage.targets`): where the Numba kernel updates a sparse parameter it moves
        that average by ``average_weight`` in the same pass; returns the ids of the parameters so averaged
        (the EMA then leaves them alone)."""
        averaged = set()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["skip_zero_grads"]:
                        state["param_steps"] = torch.zeros_like(p, dtype=torch.int32)
                state["step"] += 1
                tensors = (p, p.grad, state["exp_avg"], state["exp_avg_sq"])
                kernel = _adam_kernel_for(tensors)
                fused = {}
                average = (averages or {}).get(id(p))
                if (average is not None and kernel is cpu_adam.adam_step_ and "param_steps" in state
                        and cpu_adam.supports(p, average) and average.dtype == p.dtype):
                    fused = {"average": average, "average_weight": average_weight}
                    averaged.add(id(p))
                kernel(
                    *tensors, state["step"], group["lr"] * group["lr_factor"],
                    beta1, beta2, group["eps"], group["l2_reg"], state.get("param_steps"), **fused,
                )
                if kernel is not reference_adam.adam_step_:
                    # the compiled kernels write through raw views, unseen by torch: count the change, so
                    # that autograd refuses a graph that saved the old value (as torch's own optimizers)
                    torch.autograd.graph.increment_version(p)
        return averaged


def _adam_kernel_for(tensors: tuple[torch.Tensor, ...]):
    """The Adam step for these tensors: Numba on the CPU, Triton on CUDA (float32), else the reference."""
    backend = backend_for(tensors[0].device)
    if backend == "numba" and cpu_adam.supports(*tensors):
        return cpu_adam.adam_step_
    if backend == "triton" and (tensors[0].is_cuda or triton_kernels.interpreting()) and triton_kernels.available():
        from ngp.kernels.triton import adam as triton_adam  # imports triton: only when asked for

        if triton_adam.supports(*tensors):
            return triton_adam.adam_step_
    return reference_adam.adam_step_


class Lion(torch.optim.Optimizer):
    """tiny-cuda-nn's Lion step (plain PyTorch; see :class:`LionSettings`).

    Example:
        >>> opt = Lion(model.parameters(), lr=3e-3)
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                avg = state["exp_avg"]
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
                p.sub_(group["lr"] * torch.sign(beta1 * avg + (1.0 - beta1) * p.grad))
                avg.mul_(beta2).add_(p.grad, alpha=1.0 - beta2)


class ExponentialMovingAverage:
    """EMA of a model's parameters, for evaluation: ``avg = decay * avg + (1 - decay) * param``.

    Bias-corrected like Adam's moments, so early averages are not pulled towards the initial weights.
    """

    def __init__(self, params: list[nn.Parameter], decay: float):
        self.params = params
        self.decay = decay
        self.averages = [torch.zeros_like(p) for p in params]
        self.n_updates = 0

    @property
    def weight(self) -> float:
        """How far one update moves an average towards its parameter (``1 - decay``)."""
        return 1.0 - self.decay

    def targets(self) -> dict[int, torch.Tensor]:
        """``id(param)`` -> its average, for an optimizer step that moves them itself (:meth:`Adam.step`)."""
        return {id(p): avg for p, avg in zip(self.params, self.averages)}

    @torch.no_grad()
    def update(self, done: Collection[int] = ()) -> None:
        """One step of every average, except those of the parameters in ``done`` (ids), which the
        optimizer's step already moved."""
        self.n_updates += 1
        rest = [(avg, p) for p, avg in zip(self.params, self.averages) if id(p) not in done]
        if rest:
            torch._foreach_lerp_([avg for avg, _ in rest], [p.detach() for _, p in rest], self.weight)

    @torch.no_grad()
    def copy_to(self) -> None:
        """Load the (bias-corrected) averaged weights into the model for good (no-op before the first
        update): for a model that is only evaluated from now on."""
        if self.n_updates:
            correction = 1.0 - self.decay**self.n_updates
            for p, avg in zip(self.params, self.averages):
                p.copy_(avg / correction)

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the model (no-op before the first update)."""
        if not self.n_updates:
            yield
            return
        correction = 1.0 - self.decay**self.n_updates
        saved = [p.detach().clone() for p in self.params]
        for p, avg in zip(self.params, self.averages):
            p.copy_(avg / correction)
        try:
            yield
        finally:
            for p, s in zip(self.params, saved):
                p.copy_(s)


class Optimizer:
    """Adam + learning-rate schedule + optional EMA, stepped together. Built by :func:`build_optimizer`."""

    def __init__(self, model: nn.Module, settings: OptimizerSettings):
        self.settings = settings
        encoding_params, network_params = split_parameters(model)
        params = encoding_params + network_params
        #: The inner torch optimizer (Adam, or Lion / SGD); named ``adam`` for the code that predates them.
        self.adam = self._inner(settings.base, encoding_params, network_params)
        self.ema = ExponentialMovingAverage(params, settings.ema_decay) if settings.ema_decay else None
        self.n_steps = 0

    @staticmethod
    def _inner(base, encoding_params, network_params) -> torch.optim.Optimizer:
        if not encoding_params + network_params:
            raise ConfigError("optimizer: nothing to optimise (the model has no trainable parameters)")
        if isinstance(base, LionSettings):
            return Lion(encoding_params + network_params, lr=base.learning_rate, betas=(base.beta1, base.beta2),
                        weight_decay=base.weight_decay)
        if isinstance(base, SGDSettings):
            return torch.optim.SGD(encoding_params + network_params, lr=base.learning_rate, weight_decay=base.l2_reg)
        groups = []
        if base.optimize_encoding and encoding_params:
            groups.append({"params": encoding_params, "l2_reg": 0.0, "skip_zero_grads": True,
                           "lr_factor": base.encoding_learning_rate_factor})
        if base.optimize_network and network_params:
            groups.append({"params": network_params, "l2_reg": base.l2_reg, "skip_zero_grads": False})
        if not groups:
            raise ConfigError("optimizer: nothing to optimise (no parameters, or both optimize_* flags false)")
        return Adam(groups, lr=base.learning_rate, betas=(base.beta1, base.beta2), eps=base.epsilon)

    @property
    def learning_rate(self) -> float:
        factor = self.settings.decay.factor(self.n_steps) if self.settings.decay else 1.0
        return self.settings.base.learning_rate * factor

    def zero_grad(self) -> None:
        self.adam.zero_grad(set_to_none=True)

    def step(self) -> None:
        for group in self.adam.param_groups:
            group["lr"] = self.learning_rate
        if self.ema is not None and isinstance(self.adam, Adam):
            # the tables' averages move in Adam's own pass over them (one read of the table less)
            self.ema.update(done=self.adam.step(averages=self.ema.targets(), average_weight=self.ema.weight))
        else:
            self.adam.step()
            if self.ema is not None:
                self.ema.update()
        self.n_steps += 1

    def averaged_weights(self):
        """Context manager: evaluate with the EMA weights when an EMA is configured."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def state_dict(self) -> dict[str, Any]:
        state = {"adam": self.adam.state_dict(), "n_steps": self.n_steps}
        if self.ema is not None:
            state["ema"] = {"averages": self.ema.averages, "n_updates": self.ema.n_updates}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.adam.load_state_dict(state["adam"])
        self.n_steps = int(state["n_steps"])
        if self.ema is not None and "ema" in state:
            for avg, saved in zip(self.ema.averages, state["ema"]["averages"]):
                avg.copy_(saved)
            self.ema.n_updates = int(state["ema"]["n_updates"])


def build_optimizer(config: Mapping[str, Any] | None, model: nn.Module) -> Optimizer:
    """An :class:`Optimizer` for ``model`` from a tiny-cuda-nn optimizer config (``Adam`` by default).

    Example:
        >>> optimizer = build_optimizer({"otype": "Lion", "learning_rate": 3e-3}, model)
    """
    return Optimizer(model, parse_optimizer_config(config))
