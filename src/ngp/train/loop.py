"""The one training loop: every primitive (image, SDF, NeRF) trains through :func:`train`.

Like instant-ngp's ``Testbed::train``, the loop does the work every primitive shares and each
primitive adds only its step. The loop owns:

* the budget (``seconds`` and/or ``steps`` for this session; whichever comes first), the progress bar
  (rate, ETA, the task's own figures) and the history behind ``training.png``;
* the optimizer step under mixed precision, with the divergence guard: a step whose loss or gradient
  is not finite is skipped and counted; ``max_skipped_steps`` in a row stop the run with
  :class:`Diverged`, keeping the last good checkpoint;
* evaluations at ``eval_at`` training times, periodic checkpoints (every ``checkpoint_every`` s),
  and Ctrl-C / SIGTERM: the current step finishes, a checkpoint, the outputs and ``metrics.json`` are
  written, and :class:`Interrupted` is raised (the CLI exits with 130 / 143);
* the checkpoint: model, optimizer (Adam moments, EMA), loss scale, RNG states, step, time, history,
  the config and what the data was (a resumed run refuses other data).

A primitive is a :class:`Task`. One step of the loop reads::

    with amp.autocast():
        batch = task.training_batch(step)               # forward pass and loss
    applied = amp.backward_and_step(batch.loss, task.optimizer)   # guarded
    figures = task.after_step(batch, applied)           # bookkeeping, figures for the bar

Example::

    run = RunFolder.create("runs/x")
    summary = train(task, run, LoopSettings(seconds=60))
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol

import torch
from tqdm.auto import tqdm

from ngp.io.checkpoints import CheckpointError, flatten_optimizer_state, load_module_state, restore_optimizer, subset
from ngp.io.runs import METRICS_FILE, RunFolder
from ngp.train.precision import MixedPrecision
from ngp.train.settings import LoopSettings

__all__ = ["Batch", "Diverged", "Interrupted", "LoopState", "Observer", "Task", "load_task_state", "load_trained_model", "train"]


class Interrupted(Exception):
    """Training was stopped by a signal after saving everything; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int, run: RunFolder):
        self.signum, self.run = signum, run
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved the checkpoint and outputs in {run.path} "
                         f"(continue with --resume)")


class Diverged(FloatingPointError):
    """Too many non-finite steps in a row."""


@dataclass
class Batch:
    """What a task's forward pass returns: the loss (a scalar tensor with a graph) and how many samples
    it saw (for samples/s); ``extra`` is the task's own, passed back to :meth:`Task.after_step`."""

    loss: torch.Tensor
    n_samples: int
    extra: Any = None


class Task(Protocol):
    """A primitive as the loop sees it.

    Attributes:
        primitive: ``"image"``, ``"sdf"`` or ``"nerf"`` (recorded in the checkpoint).
        config: the run's full config (recorded in the checkpoint; a resumed run is rebuilt from it).
        model: the trained module (its ``state_dict`` goes into the checkpoint).
        optimizer: an :class:`ngp.optim.Optimizer` over ``model``.
        amp: the :class:`~ngp.train.precision.MixedPrecision` the step runs under.
    """

    primitive: str
    config: dict
    model: torch.nn.Module
    optimizer: Any
    amp: MixedPrecision

    def training_batch(self, step: int) -> Batch:
        """Sample a batch and return its loss (runs under autocast)."""

    def after_step(self, batch: Batch, applied: bool) -> dict[str, float]:
        """After the optimizer step: bookkeeping (e.g. adaptive batch size); returns the figures to show
        and record for this step (e.g. ``{"psnr": 31.2}``). ``applied`` is False for a skipped step."""

    def evaluate(self) -> dict[str, float]:
        """Quick figures of the current (averaged) model, for ``eval_at``; e.g. ``{"val_psnr": 28.1}``."""

    def write_outputs(self, run: RunFolder, state: "LoopState", progress: bool) -> dict[str, Any]:
        """Pictures, meshes etc. of the final (averaged) model into ``run``; returns metrics for metrics.json.
        ``progress``: whether long work may show a progress bar (False with ``--quiet``)."""

    def data_identity(self) -> dict[str, Any]:
        """JSON describing the training data (path, size, resolution...): a resume must find it equal."""

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The task's own state beyond model and optimizer (samplers, occupancy grid...) as (tensors, JSON)."""

    def load_extra_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        ...


@dataclass
class LoopState:
    """The loop's counters: kept in the checkpoint, so a resumed run continues them."""

    step: int = 0
    seconds: float = 0.0  # training time over all sessions (steps only)
    samples: int = 0
    skipped_steps: int = 0
    history: dict[str, list] = field(default_factory=lambda: {"step": [], "seconds": [], "loss": []})
    evals: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)

    def record(self, figures: Mapping[str, float]) -> None:
        n = len(self.history["step"])
        for key, value in figures.items():
            column = self.history.setdefault(key, [None] * n)
            column.append(value)
        for column in self.history.values():  # keys this step did not report
            if len(column) == n:
                column.append(None)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "seconds": self.seconds, "samples": self.samples,
                "skipped_steps": self.skipped_steps, "history": self.history, "evals": self.evals,
                "sessions": self.sessions}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "LoopState":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# ------------------------------------------------------------------------------------------- the loop
def train(task: Task, run: RunFolder, settings: LoopSettings, state: LoopState | None = None,
          progress: bool = True, log=print, observer: "Observer | None" = None) -> dict[str, Any]:
    """Train ``task`` for this session's budget; write checkpoints, outputs and ``metrics.json`` into ``run``.

    ``state`` continues a resumed run (see :func:`load_task_state`). ``observer`` (e.g. the live viewer)
    is called after every step. Returns the metrics written. Raises :class:`Interrupted` after a clean
    stop on SIGINT/SIGTERM and :class:`Diverged` when the loss stays non-finite.
    """
    settings.check()
    state = state or LoopState()
    session = Session(task, run, settings, state, progress, log, observer)
    with _stop_on_signals() as stop:
        session.loop(stop)
    return session.finish(stop.signum)


class Observer(Protocol):
    """Something that watches training between steps (the live viewer). Its time is not training time:
    the ``seconds`` budget counts steps only, so a paused run keeps its budget."""

    def after_step(self, session: "Session", figures: Mapping[str, float]) -> None: ...


class Session:
    """One call of :func:`train`: the loop itself and its bookkeeping."""

    def __init__(self, task: Task, run: RunFolder, settings: LoopSettings, state: LoopState, progress: bool, log,
                 observer: Observer | None = None):
        self.task, self.run, self.settings, self.state, self.log = task, run, settings, state, log
        self.observer = observer
        self._stop: _SignalFlag | None = None
        self.start_step, self.start_seconds, self.start_samples = state.step, state.seconds, state.samples
        self.pending_evals = [t for t in settings.eval_at if t > state.seconds]
        self.bar = _ProgressBar(settings, enabled=progress)
        self.wall_start = time.perf_counter()
        self.last_checkpoint = self.wall_start

    def budget_left(self) -> bool:
        s = self.settings
        if s.steps is not None and self.state.step - self.start_step >= s.steps:
            return False
        return s.seconds is None or self.state.seconds - self.start_seconds < s.seconds

    def stopping(self) -> bool:
        """Whether a signal asked the loop to stop (an observer holding training, e.g. paused, must return)."""
        return bool(self._stop and self._stop.signum)

    def loop(self, stop: "_SignalFlag") -> None:
        task, state = self.task, self.state
        self._stop = stop
        task.model.train()
        skipped_in_a_row = 0
        while self.budget_left() and not stop.signum:
            started = time.perf_counter()
            with task.amp.autocast():
                batch = task.training_batch(state.step)
            applied = task.amp.backward_and_step(batch.loss, task.optimizer)
            figures = task.after_step(batch, applied)
            state.seconds += time.perf_counter() - started
            if not applied:
                state.skipped_steps += 1
                skipped_in_a_row += 1
                if skipped_in_a_row >= self.settings.max_skipped_steps:
                    self._diverged(batch)
                continue
            skipped_in_a_row = 0
            state.step += 1
            state.samples += batch.n_samples
            state.record({"step": state.step, "seconds": round(state.seconds, 4), "loss": float(batch.loss.detach()),
                          **figures})
            self.bar.update(self, figures)
            self._evaluate_if_due()
            self._checkpoint_if_due()
            if self.observer is not None:
                self.observer.after_step(self, figures)
        self.bar.close()

    def _diverged(self, batch: Batch) -> None:
        self.bar.close()
        kept = ("the last good checkpoint is kept in " + str(self.run.checkpoint_dir)) if self.run.has_checkpoint() \
            else "no checkpoint was written yet"
        self.run.write_json(METRICS_FILE, {**self.common_metrics(), "stopped": "diverged"})
        raise Diverged(f"training diverged: {self.settings.max_skipped_steps} steps in a row had a non-finite loss "
                       f"or gradient (loss {float(batch.loss.detach())} after step {self.state.step}); {kept}. "
                       "Lower the learning rate or use --precision float32")

    def _evaluate_if_due(self) -> None:
        if self.pending_evals and self.state.seconds >= self.pending_evals[0]:
            self.pending_evals.pop(0)
            self.evaluate()

    def evaluate(self) -> dict[str, Any]:
        with self.task.optimizer.averaged_weights(), torch.no_grad():
            self.task.model.eval()
            figures = self.task.evaluate()
            self.task.model.train()
        entry = {"step": self.state.step, "seconds": round(self.state.seconds, 3), **figures}
        self.state.evals.append(entry)
        self.bar.write(f"  after {self.state.seconds:.0f} s ({self.state.step} steps): "
                       + ", ".join(f"{k} {_fmt(v)}" for k, v in figures.items()), self.log)
        return entry

    def _checkpoint_if_due(self) -> None:
        every = self.settings.checkpoint_every
        if every and time.perf_counter() - self.last_checkpoint >= every:
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        tensors, meta = task_state(self.task, self.state, self.session_record())
        self.run.save_checkpoint(tensors, meta)
        self.last_checkpoint = time.perf_counter()

    def session_record(self) -> dict[str, Any]:
        seconds = self.state.seconds - self.start_seconds
        samples = self.state.samples - self.start_samples
        return {"steps": self.state.step - self.start_step, "seconds": round(seconds, 3), "samples": samples,
                "samples_per_second": round(samples / seconds, 1) if seconds > 0 else None,
                "wall_seconds": round(time.perf_counter() - self.wall_start, 3),
                "device": str(self.task.amp.device), "precision": self.task.amp.precision}

    def common_metrics(self) -> dict[str, Any]:
        s = self.state
        return {"primitive": self.task.primitive, "steps": s.step, "seconds": round(s.seconds, 3),
                "samples_per_second": round(s.samples / s.seconds, 1) if s.seconds > 0 else None,
                "skipped_steps": s.skipped_steps, "device": str(self.task.amp.device),
                "precision": self.task.amp.precision, "session": self.session_record(),
                "sessions": s.sessions + [self.session_record()], "evals": s.evals,
                "seed": self.task.config["training"].get("seed"),
                "peak_memory_mb": round(peak_memory_mb(), 1), "peak_gpu_memory_mb": peak_gpu_memory_mb(self.task),
                "data": self.task.data_identity(), "config": self.task.config}

    def finish(self, signum: int | None) -> dict[str, Any]:
        """Checkpoint first (fast, and what a second Ctrl-C must not lose), then outputs, then metrics."""
        if signum:
            self.log(f"\n{signal.Signals(signum).name}: finishing step {self.state.step}, saving ...")
        self.save_checkpoint()
        from ngp.train.plots import write_training_plot

        with self.task.optimizer.averaged_weights(), torch.no_grad():
            self.task.model.eval()
            outputs = self.task.write_outputs(self.run, self.state, not self.bar.bar.disable)
        final = {k: v for k, v in outputs.items() if "psnr" in k and isinstance(v, (int, float))}
        write_training_plot(self.run.file("training.png"), self.state, self.task.primitive, final)
        metrics = {**self.common_metrics(), **outputs, "stopped": _stop_reason(signum)}
        self.run.write_json(METRICS_FILE, metrics)
        if signum:
            raise Interrupted(signum, self.run)
        return metrics


def _stop_reason(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "budget"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------ checkpoints
def task_state(task: Task, state: LoopState, session: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Everything a resume needs, as (tensors, JSON)."""
    tensors = {f"model.{k}": v for k, v in task.model.state_dict().items()}
    optimizer_tensors, optimizer_meta = flatten_optimizer_state(task.optimizer.state_dict())
    tensors.update(optimizer_tensors)
    extra_tensors, extra_meta = task.extra_state()
    tensors.update({f"task.{k}": v for k, v in extra_tensors.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    saved = state.to_json()
    saved["sessions"] = state.sessions + [dict(session)]
    meta = {"primitive": task.primitive, "config": task.config, "data": task.data_identity(), "loop": saved,
            "optimizer": optimizer_meta, "mixed_precision": task.amp.state_dict(), "task": extra_meta}
    return tensors, meta


def load_task_state(task: Task, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                    where: Any) -> LoopState:
    """Restore ``task`` (built from ``meta["config"]``) from a checkpoint; returns the loop's state.

    Refuses a task whose data differs from the checkpoint's (names what changed).
    """
    check_same_data(meta.get("data", {}), task.data_identity(), where)
    load_module_state(task.model, tensors, "model.", where)
    try:
        restore_optimizer(task.optimizer, tensors, meta["optimizer"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {where}: optimizer state does not match the model: {error}") from None
    if task.amp.scaler.is_enabled():  # a float32 run resumed in float16 starts a fresh scale
        task.amp.load_state_dict(meta.get("mixed_precision", {}))
    task.load_extra_state(subset(tensors, "task."), meta.get("task", {}))
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return LoopState.from_json(meta.get("loop", {}))


def load_trained_model(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                       where: Any) -> torch.nn.Module:
    """Load a checkpoint's weights into ``model`` (built from ``meta["config"]``) for evaluation and
    rendering: the EMA-averaged weights where the run's optimizer keeps an average, as training's own
    evaluations use them. Returns ``model`` in eval mode."""
    from ngp.optim import build_optimizer

    load_module_state(model, tensors, "model.", where)
    optimizer = build_optimizer(meta["config"]["optimizer"], model)
    try:
        restore_optimizer(optimizer, tensors, meta["optimizer"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {where}: optimizer state does not match the model: {error}") from None
    if optimizer.ema is not None:
        optimizer.ema.copy_to()
    return model.eval()


def check_same_data(saved: Mapping[str, Any], current: Mapping[str, Any], where: Any) -> None:
    changed = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if changed:
        details = "; ".join(f"{k}: run {saved.get(k)!r}, now {current.get(k)!r}" for k in changed)
        raise CheckpointError(f"cannot resume {where}: the data differs from what it was trained on ({details})")


# ------------------------------------------------------------------------------------ resources
def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``getrusage`` reports KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_gpu_memory_mb(task: Task) -> float | None:
    device = task.amp.device
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


# ------------------------------------------------------------------------------------ signals
class _SignalFlag:
    signum: int | None = None


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_SignalFlag]:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second signal stops at once
    (KeyboardInterrupt), in case the step itself hangs. Only the main thread can take signals."""
    flag = _SignalFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.signum is not None:
            raise KeyboardInterrupt
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------------ progress
class _ProgressBar:
    """One tqdm bar over the session's budget (per mille of the first limit to come), with rate and ETA."""

    TOTAL = 1000

    def __init__(self, settings: LoopSettings, enabled: bool):
        self.settings = settings
        self.bar = tqdm(total=self.TOTAL, disable=not enabled, dynamic_ncols=True, mininterval=0.5, leave=True,
                        desc="training", bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        self.recent: list[tuple[int, float]] = []

    def update(self, session: Session, figures: Mapping[str, float]) -> None:
        if self.bar.disable:
            return
        s, state = self.settings, session.state
        done = 0.0
        if s.steps is not None:
            done = max(done, (state.step - session.start_step) / s.steps)
        if s.seconds is not None:
            done = max(done, (state.seconds - session.start_seconds) / s.seconds)
        rate = (state.samples - session.start_samples) / max(state.seconds - session.start_seconds, 1e-9)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in figures.items() if isinstance(v, (int, float)))
        self.bar.set_postfix_str(f"step={state.step} loss={state.history['loss'][-1]:.4g} {shown} "
                                 f"samples/s={_rate(rate)}", refresh=False)
        self.bar.update(min(round(done * self.TOTAL), self.TOTAL) - self.bar.n)

    def write(self, message: str, log) -> None:
        """A line above the bar (tqdm.write keeps the bar intact); ``log`` when there is no bar."""
        if self.bar.disable:
            log(message)
        else:
            self.bar.write(message)

    def close(self) -> None:
        self.bar.close()


def _rate(per_second: float) -> str:
    if not math.isfinite(per_second):
        return "-"
    return f"{per_second / 1e6:.2f}M" if per_second >= 1e6 else f"{per_second / 1e3:.1f}k"
