"""One CLI: every training command shares its options; stops and crashes lose nothing (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from ngp.cli import app
from ngp.io.checkpoints import load_checkpoint
from ngp.io.images import read_image, write_image

SHARED_TRAINING_OPTIONS = ("--out", "--seconds", "--steps", "--config", "--seed", "--resume", "--force", "--device",
                           "--precision", "--quiet", "--checkpoint-every", "--eval-at")
TRAINING_COMMANDS = (("image", "fit"), ("sdf", "fit"), ("nerf", "train"))
READING_COMMANDS = (("image", "render"), ("sdf", "render"), ("sdf", "mesh"), ("nerf", "eval"), ("nerf", "render"),
                    ("nerf", "mesh"))
SMALL = {"encoding": {"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 4, "per_level_scale": 1.5},
         "network": {"n_neurons": 16}}


def options_of(group: str, command: str) -> set[str]:
    from typer.main import get_command

    click_command = get_command(app).commands[group].commands[command]
    return {opt for param in click_command.params for opt in param.opts}, click_command


@pytest.mark.parametrize("group, command", TRAINING_COMMANDS)
def test_every_training_command_takes_the_shared_options(group, command):
    options, _ = options_of(group, command)
    assert set(SHARED_TRAINING_OPTIONS) <= options, set(SHARED_TRAINING_OPTIONS) - options


@pytest.mark.parametrize("group, command", READING_COMMANDS)
def test_every_reading_command_takes_the_run_folder(group, command):
    _, click_command = options_of(group, command)
    assert click_command.params[0].name == "run" and click_command.params[0].param_type_name == "argument"


def ngp(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ngp", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kwargs)


@pytest.fixture(scope="module")
def image_and_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    write_image(folder / "crop.png", read_image("builtin:astronaut").array[100:164, 200:264])
    (folder / "small.json").write_text(json.dumps(SMALL))
    return folder / "crop.png", folder / "small.json"


def wait_for(predicate, process, timeout=120.0):
    start = time.monotonic()
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"process ended early:\n{process.stdout.read()}")
        if time.monotonic() - start > timeout:
            process.kill()
            raise AssertionError("timed out")
        time.sleep(0.1)


@pytest.mark.slow
def test_sigint_saves_and_exits_130_then_resume_continues(image_and_config, tmp_path):
    image, config = image_and_config
    run = tmp_path / "run"
    process = ngp("image", "fit", image, "--out", run, "--seconds", 600, "--config", config, "--quiet",
                  "--batch-size", 1024, "--checkpoint-every", 0.5)
    wait_for(lambda: (run / "checkpoint" / "checkpoint.json").is_file(), process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "Traceback" not in output and "SIGINT" in output and "--resume" in output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped"] == "SIGINT" and metrics["steps"] > 0
    assert load_checkpoint(run)[1]["loop"]["step"] == metrics["steps"]
    assert (run / "reconstruction.png").is_file()

    result = subprocess.run([sys.executable, "-m", "ngp", "image", "fit", str(image), "--out", str(run), "--resume",
                             "--steps", "5", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((run / "metrics.json").read_text())["steps"] == metrics["steps"] + 5


@pytest.mark.slow
def test_kill_9_after_a_periodic_checkpoint_can_be_resumed(image_and_config, tmp_path):
    image, config = image_and_config
    run = tmp_path / "run"
    process = ngp("image", "fit", image, "--out", run, "--seconds", 600, "--config", config, "--quiet",
                  "--batch-size", 1024, "--checkpoint-every", 0.5)
    wait_for(lambda: (run / "checkpoint" / "checkpoint.json").is_file(), process)
    time.sleep(1.0)
    process.kill()  # SIGKILL: no handler runs
    process.communicate()
    saved = load_checkpoint(run)[1]["loop"]["step"]
    assert saved > 0 and not (run / "metrics.json").exists()
    result = subprocess.run([sys.executable, "-m", "ngp", "image", "fit", str(image), "--out", str(run), "--resume",
                             "--steps", "3", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((run / "metrics.json").read_text())["steps"] == saved + 3


def test_rerunning_into_a_run_folder_is_refused_and_changes_nothing(image_and_config, tmp_path):
    image, config = image_and_config
    runner = CliRunner()
    args = ["image", "fit", str(image), "--out", str(tmp_path / "run"), "--steps", "2", "--quiet"]
    assert runner.invoke(app, args + ["--config", str(config)]).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "already holds a run" in result.output and "Traceback" not in result.output
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before
    other = [a if a != str(image) else "builtin:camera" for a in args]
    result = runner.invoke(app, other + ["--resume"])
    assert result.exit_code == 1 and "cannot resume with data 'builtin:camera'" in result.output
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before
    result = runner.invoke(app, args + ["--config", str(config), "--force", "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 3
