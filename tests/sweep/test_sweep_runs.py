"""ngp sweep end to end on a tiny image: the command, results.csv against each run, plots, resuming."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import ngp.sweep as sweep
from ngp.cli import app
from ngp.image.trainer import build_image_task
from ngp.train.session import TrainRequest, train_run

SETS = ["encoding.log2_hashmap_size=10,12"]
NAMES = ["encoding.log2_hashmap_size=10__repeat=0", "encoding.log2_hashmap_size=12__repeat=0"]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.png"
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def finished_sweep(image, tmp_path_factory):
    """``ngp sweep image tiny.png --set encoding.log2_hashmap_size=10,12 --steps 5``, through the CLI."""
    out = tmp_path_factory.mktemp("sweep") / "s"
    result = CliRunner().invoke(app, ["sweep", "image", str(image), "--out", str(out), "--set", SETS[0],
                                      "--steps", "5", "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_one_run_folder_per_combination_and_a_line_each(finished_sweep):
    out, output = finished_sweep
    assert sorted(p.name for p in (out / "runs").iterdir()) == NAMES
    for name in NAMES:
        metrics = json.loads((out / "runs" / name / "metrics.json").read_text())
        assert metrics["steps"] == 5 and metrics["stopped"] == "budget"
        assert metrics["config"]["encoding"]["log2_hashmap_size"] == int(name.split("=")[1].split("_")[0])
    lines = [line for line in output.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in lines] == ["[1/2]", "[2/2]"]
    assert all("psnr" in line for line in lines)


def test_results_csv_matches_each_runs_metrics(finished_sweep):
    out, _ = finished_sweep
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["run", "encoding.log2_hashmap_size", "repeat", "psnr", "n_params", "param_bytes",
                             "steps", "seconds", "samples_per_second", "stopped", "folder"]
    assert [row["run"] for row in rows] == NAMES
    for row in rows:
        run = out / row["folder"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert float(row["psnr"]) == metrics["psnr"]
        assert int(row["encoding.log2_hashmap_size"]) == metrics["config"]["encoding"]["log2_hashmap_size"]
        for key in ("n_params", "steps"):
            assert int(row[key]) == metrics[key]
        for key in ("seconds", "samples_per_second"):
            assert float(row[key]) == metrics[key]
        model = {k: v for k, v in load_file(run / "checkpoint" / "model.safetensors").items() if k.startswith("model.")}
        assert int(row["param_bytes"]) == sum(t.numel() * t.element_size() for t in model.values())
    assert int(rows[1]["param_bytes"]) > int(rows[0]["param_bytes"])  # the larger table


def test_plots_are_pngs(finished_sweep):
    out, _ = finished_sweep
    for name in ("quality_vs_size.png", "quality_vs_time.png"):
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 100


def test_cli_reports_a_bad_set_in_one_line(image, tmp_path):
    result = CliRunner().invoke(app, ["sweep", "image", str(image), "--out", str(tmp_path / "s"),
                                      "--set", "encoding.log2_hashmap_sise=10", "--steps", "5"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "log2_hashmap_sise" in result.output
    assert len(result.output.strip().splitlines()) == 1


def _counting_execute(monkeypatch):
    started = []
    real = sweep.execute

    def counted(job):
        started.append(job.name)
        return real(job)

    monkeypatch.setattr(sweep, "execute", counted)
    return started


def _train(image, run, steps):
    """What an interrupted sweep leaves: the second combination trained for ``steps`` of its 5."""
    train_run("image", build_image_task, TrainRequest(out=run, config={"encoding": {"log2_hashmap_size": 12}},
                                                      overrides={"data": str(image), "steps": steps}, device="cpu",
                                                      progress=False))


@pytest.mark.parametrize("left_by", ["kill", "ctrl-c"])
def test_interrupted_sweep_reads_finished_runs_and_resumes_the_interrupted_one(image, tmp_path, monkeypatch, left_by):
    out = tmp_path / "s"
    sweep.run_sweep("image", image, out, ["encoding.log2_hashmap_size=10"], steps=5, device="cpu")
    first = out / "runs" / NAMES[0] / "metrics.json"
    first_written = first.stat().st_mtime_ns
    second = out / "runs" / NAMES[1]
    _train(image, second, 2)
    metrics = second / "metrics.json"
    if left_by == "kill":  # killed: only the periodic checkpoint is there
        metrics.unlink()
    else:  # Ctrl-C: everything saved, metrics.json says so
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "stopped": "SIGINT"}))
    started = _counting_execute(monkeypatch)
    rows = sweep.run_sweep("image", image, out, SETS, steps=5, device="cpu")
    assert started == [NAMES[1]]
    assert first.stat().st_mtime_ns == first_written
    resumed = json.loads(metrics.read_text())
    assert resumed["steps"] == 5 and resumed["stopped"] == "budget"
    assert [s["steps"] for s in resumed["sessions"]] == [2, 3]  # continued, not started again
    assert [row["steps"] for row in rows] == [5, 5]


def test_a_run_killed_after_its_budget_is_restarted(image, tmp_path, monkeypatch):
    """Its checkpoint holds all 5 steps but its outputs were never written: nothing left to resume."""
    out = tmp_path / "s"
    sweep.run_sweep("image", image, out, SETS, steps=5, device="cpu")
    second = out / "runs" / NAMES[1] / "metrics.json"
    second.unlink()
    started = _counting_execute(monkeypatch)
    rows = sweep.run_sweep("image", image, out, SETS, steps=5, device="cpu")
    assert started == [NAMES[1]]
    restarted = json.loads(second.read_text())
    assert [s["steps"] for s in restarted["sessions"]] == [5]
    assert [row["run"] for row in rows] == NAMES


def test_repeats_use_successive_seeds(image, tmp_path):
    rows = sweep.run_sweep("image", image, tmp_path / "s", ["training.batch_size=256"], steps=2, repeats=2,
                           device="cpu")
    seeds = [json.loads((tmp_path / "s" / row["folder"] / "metrics.json").read_text())["seed"] for row in rows]
    assert [row["repeat"] for row in rows] == [0, 1] and seeds == [0, 1]


def test_rerun_with_another_budget_is_refused(image, tmp_path):
    sweep.run_sweep("image", image, tmp_path / "s", ["training.batch_size=256"], steps=2, device="cpu")
    with pytest.raises(ValueError, match="steps=2.*steps=3"):
        sweep.run_sweep("image", image, tmp_path / "s", ["training.batch_size=256"], steps=3, device="cpu")
