"""The shared training loop, driven by a tiny task: budget, guard, signals, checkpoints, resume."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from ngp.io.checkpoints import load_checkpoint
from ngp.io.runs import RunFolder
from ngp.networks import NetworkWithInputEncoding
from ngp.optim import build_optimizer
from ngp.train.loop import Batch, Diverged, Interrupted, LoopState, load_task_state, train
from ngp.train.precision import MixedPrecision
from ngp.train.settings import LoopSettings

ENCODING = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
            "base_resolution": 4, "per_level_scale": 1.5}
NETWORK = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None", "n_neurons": 16,
           "n_hidden_layers": 1}


class ToyTask:
    """Fits ``f(x, y) = sin(3x) cos(2y)``; hooks let a test break a step or watch the loop."""

    primitive = "toy"

    def __init__(self, seed: int = 0, hook=None):
        torch.manual_seed(seed)
        self.config = {"training": {"seed": seed}, "optimizer": {"otype": "Adam", "learning_rate": 1e-2}}
        self.model = NetworkWithInputEncoding(2, 1, ENCODING, NETWORK)
        self.optimizer = build_optimizer({"otype": "Ema", "decay": 0.9, "nested": {"otype": "Adam",
                                                                                   "learning_rate": 1e-2}}, self.model)
        self.amp = MixedPrecision("cpu", "float32")
        self.generator = torch.Generator().manual_seed(seed)
        self.hook = hook
        self.evaluated_at: list[int] = []

    def training_batch(self, step: int) -> Batch:
        x = torch.rand(256, 2, generator=self.generator)
        target = torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])
        loss = (self.model(x) - target).square().mean()
        if self.hook is not None:
            loss = self.hook(step, loss)
        return Batch(loss, 256)

    def after_step(self, batch: Batch, applied: bool) -> dict[str, float]:
        return {"psnr": -10 * math.log10(max(float(batch.loss.detach()), 1e-12))} if applied else {}

    def evaluate(self) -> dict[str, float]:
        self.evaluated_at.append(self._step_hint)
        return {"val_psnr": 20.0}

    def write_outputs(self, run, state, progress) -> dict:
        run.file("output.txt").write_text(f"{state.step}")
        return {"final": state.step}

    def data_identity(self) -> dict:
        return {"what": "toy"}

    def extra_state(self):
        return {"generator": self.generator.get_state()}, {"note": "toy"}

    def load_extra_state(self, tensors, meta) -> None:
        self.generator.set_state(tensors["generator"])


@pytest.fixture
def run(tmp_path):
    return RunFolder.create(tmp_path / "run").start()


def parameters(task) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in task.model.parameters()])


def test_step_budget_is_exact_and_outputs_are_written(run):
    task = ToyTask()
    metrics = train(task, run, LoopSettings(steps=25), progress=False, log=lambda m: None)
    assert metrics["steps"] == 25 and metrics["stopped"] == "budget" and metrics["final"] == 25
    assert run.file("output.txt").read_text() == "25"
    assert run.file("training.png").stat().st_size > 1000
    tensors, meta = load_checkpoint(run.path, "toy")
    assert meta["loop"]["step"] == 25 and len(meta["loop"]["history"]["loss"]) == 25
    assert meta["loop"]["history"]["loss"][-1] < meta["loop"]["history"]["loss"][0]  # it learns


def test_seconds_budget_counts_training_time(run):
    metrics = train(ToyTask(), run, LoopSettings(seconds=0.5), progress=False, log=lambda m: None)
    assert 0.5 <= metrics["seconds"] < 2.0 and metrics["steps"] > 1


def test_non_finite_loss_skips_the_step_and_leaves_the_weights(run):
    before = {}

    def hook(step, loss):
        if step == 3 and "done" not in before:
            before["weights"] = parameters(task)
            before["done"] = True
            return loss * float("nan")
        return loss

    task = ToyTask(hook=hook)
    metrics = train(task, run, LoopSettings(steps=6), progress=False, log=lambda m: None)
    assert metrics["skipped_steps"] == 1 and metrics["steps"] == 6
    assert torch.isfinite(parameters(task)).all()


def test_non_finite_gradient_with_a_finite_loss_is_not_applied(run):
    weights = []

    def hook(step, loss):
        if step == 2 and not weights:
            weights.append(parameters(task))
            zero = (loss - loss.detach()) * 0  # value 0, gradient 0
            return loss + torch.sqrt(zero.abs()) * 0  # d sqrt(0) = inf -> 0 * inf = NaN gradient, finite loss
        return loss

    task = ToyTask(hook=hook)
    applied = []
    original = task.after_step
    task.after_step = lambda batch, ok: (applied.append(ok), original(batch, ok))[1]
    metrics = train(task, run, LoopSettings(steps=4), progress=False, log=lambda m: None)
    assert applied == [True, True, False, True, True] and metrics["skipped_steps"] == 1
    assert torch.isfinite(parameters(task)).all()


def test_a_run_of_non_finite_steps_stops_as_diverged_and_keeps_the_checkpoint(run):
    task = ToyTask(hook=lambda step, loss: loss * float("nan") if step >= 5 else loss)
    train(ToyTask(), run, LoopSettings(steps=5), progress=False, log=lambda m: None)  # a good checkpoint first
    good = load_checkpoint(run.path)[1]["loop"]["step"]
    with pytest.raises(Diverged, match="20 steps in a row.*last good checkpoint is kept"):
        train(task, run, LoopSettings(steps=100, max_skipped_steps=20), progress=False, log=lambda m: None)
    assert load_checkpoint(run.path)[1]["loop"]["step"] == good
    assert run.read_json("metrics.json")["stopped"] == "diverged"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_finishes_the_step_saves_everything_and_says_so(run, signum, code):
    def hook(step, loss):
        if step == 7:
            os.kill(os.getpid(), signum)  # arrives mid-step; the step must still complete
        return loss

    task = ToyTask(hook=hook)
    # as they were (pytest's default handler; SIG_IGN where the tests run in a background job)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Interrupted) as stop:
        train(task, run, LoopSettings(steps=10_000), progress=False, log=lambda m: None)
    assert stop.value.exit_code == code
    tensors, meta = load_checkpoint(run.path, "toy")
    assert meta["loop"]["step"] == 8  # step 7 (0-based) finished, then the loop stopped
    metrics = run.read_json("metrics.json")
    assert metrics["stopped"] == signal.Signals(signum).name and metrics["steps"] == 8
    assert run.file("output.txt").read_text() == "8"
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


def test_periodic_checkpoints_are_written_during_training(run):
    seen = []

    def hook(step, loss):
        if step in (0, 40):
            seen.append(run.has_checkpoint())
        return loss

    train(ToyTask(hook=hook), run, LoopSettings(steps=41, checkpoint_every=1e-9), progress=False,
          log=lambda m: None)
    assert seen == [False, True]


def test_evaluations_happen_at_the_requested_training_times(run):
    task = ToyTask()
    task._step_hint = 0
    original = task.after_step

    def after_step(batch, ok):
        task._step_hint += 1
        return original(batch, ok)

    task.after_step = after_step
    metrics = train(task, run, LoopSettings(seconds=0.6, eval_at=(0.2, 0.4)), progress=False, log=lambda m: None)
    assert [round(e["seconds"], 1) >= t for e, t in zip(metrics["evals"], (0.2, 0.4))] == [True, True]
    assert len(metrics["evals"]) == 2 and metrics["evals"][0]["val_psnr"] == 20.0


def test_resume_continues_counters_history_and_sampling(tmp_path):
    # one run of 20 steps == 12 steps, then a resumed session of 8 (same samples, same weights)
    straight = RunFolder.create(tmp_path / "a").start()
    reference = ToyTask()
    train(reference, straight, LoopSettings(steps=20), progress=False, log=lambda m: None)

    split = RunFolder.create(tmp_path / "b").start()
    train(ToyTask(), split, LoopSettings(steps=12), progress=False, log=lambda m: None)
    resumed = ToyTask(seed=0)
    tensors, meta = load_checkpoint(split.path, "toy")
    state = load_task_state(resumed, tensors, meta, split.path)
    assert state.step == 12
    metrics = train(resumed, split, LoopSettings(steps=8), state, progress=False, log=lambda m: None)
    assert metrics["steps"] == 20 and len(metrics["sessions"]) == 2
    assert torch.allclose(parameters(resumed), parameters(reference), atol=1e-6)
    assert len(load_checkpoint(split.path)[1]["loop"]["history"]["step"]) == 20


def test_resume_refuses_other_data(run):
    train(ToyTask(), run, LoopSettings(steps=2), progress=False, log=lambda m: None)
    other = ToyTask()
    other.data_identity = lambda: {"what": "another toy"}
    tensors, meta = load_checkpoint(run.path)
    with pytest.raises(ValueError, match="data differs.*what: run 'toy', now 'another toy'"):
        load_task_state(other, tensors, meta, run.path)


def test_loop_state_round_trips_through_json():
    state = LoopState(step=3, seconds=1.5, samples=10)
    state.record({"step": 1, "seconds": 0.1, "loss": 1.0, "psnr": 3.0})
    state.record({"step": 2, "seconds": 0.2, "loss": 0.5})
    assert state.history["psnr"] == [3.0, None]
    assert LoopState.from_json(state.to_json()) == state
