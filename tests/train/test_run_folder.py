"""The run folder and its checkpoint: never overwritten by accident, written as a unit, versioned."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ngp.io import files
from ngp.io.checkpoints import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from ngp.io.runs import RunFolder


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def make_run(path, value=1.0):
    run = RunFolder.create(path).start()
    run.save_checkpoint({"w": torch.full((3,), value)}, {"primitive": "toy", "value": value})
    run.write_json("metrics.json", {"value": value})
    return run


def test_an_existing_run_is_refused_without_resume_or_force_and_left_unchanged(tmp_path):
    make_run(tmp_path / "run")
    before = snapshot(tmp_path / "run")
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume .* or --force"):
        RunFolder.create(tmp_path / "run")
    assert snapshot(tmp_path / "run") == before


def test_force_replaces_a_run_only_when_started_and_only_a_run(tmp_path):
    make_run(tmp_path / "run")
    run = RunFolder.create(tmp_path / "run", force=True)
    assert (tmp_path / "run" / "metrics.json").exists()  # nothing deleted until every input was checked
    run.start()
    assert list((tmp_path / "run").iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not an ngp run folder"):
        RunFolder.create(tmp_path / "mine", force=True)
    with pytest.raises(ValueError, match="contradict"):
        RunFolder.create(tmp_path / "run", resume=True, force=True)


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        RunFolder.create(tmp_path / "empty", resume=True)
    make_run(tmp_path / "run")
    assert RunFolder.create(tmp_path / "run", resume=True).has_checkpoint()


def test_checkpoint_versions_are_checked_with_both_named(tmp_path):
    make_run(tmp_path / "run")
    meta_file = tmp_path / "run" / "checkpoint" / "checkpoint.json"
    meta = json.loads(meta_file.read_text())
    for version, word in ((999, "newer"), (1, "older")):
        meta_file.write_text(json.dumps({**meta, "format_version": version}))
        with pytest.raises(CheckpointError, match=rf"format version {version} \({word}.*reads version {FORMAT_VERSION}"):
            load_checkpoint(tmp_path / "run")
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="checkpoint of 'toy', not of 'nerf'"):
        load_checkpoint(tmp_path / "run", primitive="nerf")


def test_a_crash_while_saving_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", value=1.0)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", crash)  # the new folder is complete, the swap fails
    with pytest.raises(OSError, match="disk full"):
        run.save_checkpoint({"w": torch.full((3,), 2.0)}, {"primitive": "toy", "value": 2.0})
    monkeypatch.undo()
    tensors, meta = load_checkpoint(run.path)
    assert meta["value"] == 1.0 and torch.equal(tensors["w"], torch.full((3,), 1.0))
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoint", "metrics.json"]  # no staging left


def test_a_crash_between_the_two_renames_falls_back_to_the_old_checkpoint(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", value=1.0)
    real_replace, calls = os.replace, []

    def second_fails(src, dst):  # a power cut after the first rename: nothing after it happens
        calls.append(dst)
        if len(calls) >= 2:
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", second_fails)
    with pytest.raises(OSError):
        run.save_checkpoint({"w": torch.full((3,), 2.0)}, {"primitive": "toy", "value": 2.0})
    monkeypatch.undo()
    assert not (run.path / "checkpoint").exists() and (run.path / "checkpoint.old").is_dir()
    assert load_checkpoint(run.path)[1]["value"] == 1.0
    assert RunFolder.create(run.path, resume=True).has_checkpoint()
    run.save_checkpoint({"w": torch.full((3,), 3.0)}, {"primitive": "toy", "value": 3.0})  # recovers
    assert load_checkpoint(run.path)[1]["value"] == 3.0 and not (run.path / "checkpoint.old").exists()


def test_metadata_that_cannot_be_written_touches_nothing(tmp_path):
    run = make_run(tmp_path / "run")
    before = snapshot(run.path)
    with pytest.raises(TypeError):
        save_checkpoint(run.checkpoint_dir, {"w": torch.zeros(1)}, {"primitive": "toy", "bad": object()})
    assert snapshot(run.path) == before
