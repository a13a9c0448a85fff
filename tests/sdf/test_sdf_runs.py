"""SDF runs on the shared loop: resume (exact, refusing other data), the run folder's rules, the
divergence guard, and Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from ngp.cli import app
from ngp.io.checkpoints import load_checkpoint
from ngp.sdf.model import NeuralSDF
from ngp.sdf.trainer import fit_sdf
from ngp.train.loop import Diverged

from .conftest import SMALL_CONFIG, SMALL_OUTPUT_OPTIONS, small_outputs, write_mesh

runner = CliRunner()


def fit_cli(mesh, run, config, *options):
    result = runner.invoke(app, ["sdf", "fit", str(mesh), "--out", str(run), "--config", str(config), "--quiet",
                                 *SMALL_OUTPUT_OPTIONS, *map(str, options)])
    return result, result.output


def resume_cli(mesh, run, *options):
    """--config cannot be given with --resume: the run keeps its own."""
    result = runner.invoke(app, ["sdf", "fit", str(mesh), "--out", str(run), "--resume", "--quiet",
                                 *SMALL_OUTPUT_OPTIONS, *map(str, options)])
    return result, result.output


def snapshot(folder):
    """Every file under ``folder`` with its modification time (ns)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def history(run):
    return load_checkpoint(run)[1]["loop"]["history"]


def test_resume_continues_with_more_steps_and_the_same_batches(tmp_path, sphere_file, small_config_file):
    whole, split = tmp_path / "whole", tmp_path / "split"
    result, output = fit_cli(sphere_file, whole, small_config_file, "--steps", 6)
    assert result.exit_code == 0, output
    result, output = fit_cli(sphere_file, split, small_config_file, "--steps", 3)
    assert result.exit_code == 0, output
    result, output = resume_cli(sphere_file, split, "--steps", 3)
    assert result.exit_code == 0, output
    assert "resuming" in output and "at step 3" in output
    metrics = json.loads((split / "metrics.json").read_text())
    assert metrics["steps"] == 6 and [s["steps"] for s in metrics["sessions"]] == [3, 3]
    assert metrics["data"] == json.loads((whole / "metrics.json").read_text())["data"]
    # the pool, the sampler's RNG, torch's RNG, weights and Adam all continue: the same losses, bit for bit
    assert history(split)["loss"] == history(whole)["loss"]
    tensors_whole, tensors_split = load_checkpoint(whole)[0], load_checkpoint(split)[0]
    for name in ("model.field.encoding.table", "task.pool.points", "task.pool.distances"):
        assert torch.equal(tensors_whole[name], tensors_split[name]), name


def test_resume_refuses_a_changed_mesh(tmp_path, sphere_mesh, small_config_file):
    mesh_file = write_mesh(tmp_path / "sphere.obj", sphere_mesh)
    run = tmp_path / "run"
    result, output = fit_cli(mesh_file, run, small_config_file, "--steps", 2)
    assert result.exit_code == 0, output
    before = snapshot(run)
    sphere_mesh.apply_translation([0.0, 0.0, 0.01])  # same vertex and face counts: only the hash tells
    write_mesh(mesh_file, sphere_mesh)
    result, output = resume_cli(mesh_file, run, "--steps", 2)
    assert result.exit_code == 1 and "Traceback" not in output
    assert "data differs" in output and "sha1" in output and "vertices" not in output
    other = write_mesh(tmp_path / "other.obj", sphere_mesh)  # another file: refused by its path
    result, output = resume_cli(other, run, "--steps", 2)
    assert result.exit_code == 1 and "cannot resume with data" in output and "other.obj" in output
    assert snapshot(run) == before


def test_rerun_without_resume_or_force_is_refused_and_changes_nothing(tmp_path, sphere_file, small_config_file):
    run = tmp_path / "run"
    result, output = fit_cli(sphere_file, run, small_config_file, "--steps", 2)
    assert result.exit_code == 0, output
    before = snapshot(run)
    assert "checkpoint/model.safetensors" in before and "mesh.ply" in before
    time.sleep(0.01)  # a rewrite would show in the mtimes
    result, output = fit_cli(sphere_file, run, small_config_file, "--steps", 2)
    assert result.exit_code == 1 and "already holds a run" in output and "--resume" in output
    assert snapshot(run) == before

    (run / "stale.txt").write_text("from an earlier run")
    result, output = fit_cli(sphere_file, run, small_config_file, "--steps", 3, "--force")
    assert result.exit_code == 0, output
    assert not (run / "stale.txt").exists()
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3 and len(history(run)["loss"]) == 3


def nan_on_training_calls(monkeypatch, bad_calls):
    """Make :meth:`NeuralSDF.unit_sdf` return NaN on the training forward passes numbered ``bad_calls``
    (0-based; evaluation, in eval mode, is left alone)."""
    original = NeuralSDF.unit_sdf
    calls = {"n": 0}

    def unit_sdf(self, x):
        out = original(self, x)
        if self.training:
            calls["n"] += 1
            if bad_calls(calls["n"] - 1):
                return out * float("nan")
        return out

    monkeypatch.setattr(NeuralSDF, "unit_sdf", unit_sdf)
    return calls


def test_a_nan_loss_is_skipped_and_counted(tmp_path, sphere_file, monkeypatch):
    calls = nan_on_training_calls(monkeypatch, lambda i: i in (2, 3, 4))
    metrics = fit_sdf(sphere_file, tmp_path / "run", steps=8, config=SMALL_CONFIG, progress=False,
                      outputs=small_outputs())
    assert calls["n"] == 11  # 8 steps taken, 3 skipped
    assert metrics["steps"] == 8 and metrics["skipped_steps"] == 3
    losses = history(tmp_path / "run")["loss"]
    assert len(losses) == 8 and all(loss == loss for loss in losses)  # skipped steps are not recorded
    sdf = NeuralSDF.from_checkpoint(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in sdf.parameters())  # no NaN reached the weights


def test_nan_losses_in_a_row_stop_the_run(tmp_path, sphere_file, monkeypatch):
    nan_on_training_calls(monkeypatch, lambda i: i >= 2)
    config = {**SMALL_CONFIG, "training": {**SMALL_CONFIG["training"], "max_skipped_steps": 5}}
    with pytest.raises(Diverged, match="5 steps in a row"):
        fit_sdf(sphere_file, tmp_path / "api", steps=50, config=config, progress=False, outputs=small_outputs())

    monkeypatch.undo()  # count the calls afresh
    nan_on_training_calls(monkeypatch, lambda i: i >= 2)
    (tmp_path / "c.json").write_text(json.dumps(config))
    result, output = fit_cli(sphere_file, tmp_path / "run", tmp_path / "c.json", "--steps", 50)
    assert result.exit_code == 1 and "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: training diverged")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stopped"] == "diverged" and metrics["steps"] == 2 and metrics["skipped_steps"] == 5


def test_sigint_saves_a_checkpoint_and_metrics_and_exits_130(tmp_path, sphere_file, small_config_file):
    run = tmp_path / "run"
    command = [sys.executable, "-c", "from ngp.cli import main; main()", "sdf", "fit", str(sphere_file), "--out",
               str(run), "--config", str(small_config_file), "--seconds", "60", "--checkpoint-every", "0.2", "--quiet",
               *SMALL_OUTPUT_OPTIONS]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60  # the first periodic checkpoint means training is under way
        while not (run / "checkpoint" / "checkpoint.json").exists():
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "no checkpoint after 60 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "SIGINT" in output and "--resume" in output and "Traceback" not in output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped"] == "SIGINT" and metrics["steps"] > 0 and metrics["seconds"] < 50
    assert load_checkpoint(run)[1]["loop"]["step"] == metrics["steps"]
    assert (run / "mesh.ply").is_file() and (run / "render.png").is_file()
    with torch.no_grad():
        assert NeuralSDF.from_checkpoint(run)(torch.tensor([[1.0, 2.0, 3.0]])).isfinite().all()
