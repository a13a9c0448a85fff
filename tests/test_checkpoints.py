"""Checkpoints: safetensors + JSON round trip, optimizer state for resuming, clear errors."""

import json

import pytest
import torch

import ngp
from ngp.io.checkpoints import (
    flatten_optimizer_state, load_checkpoint, restore_optimizer, save_checkpoint,
)
from ngp.io.files import atomic_path, prepare_output_dir
from safety_checks import assert_safetensors_holding, no_unpickling


def trained_model():
    torch.manual_seed(0)
    model = ngp.NetworkWithInputEncoding(2, 1, {"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 8},
                                         {"otype": "FullyFusedMLP", "n_neurons": 8, "n_hidden_layers": 1})
    opt = ngp.build_optimizer({"otype": "Ema", "decay": 0.9, "nested": {"otype": "Adam"}}, model)
    for _ in range(3):
        opt.zero_grad()
        model(torch.rand(32, 2)).sum().backward()
        opt.step()
    return model, opt


def test_round_trip_restores_model_and_optimizer(tmp_path):
    model, opt = trained_model()
    opt_tensors, opt_meta = flatten_optimizer_state(opt.state_dict())
    save_checkpoint(tmp_path / "ckpt", {**model.state_dict(), **opt_tensors}, {"optimizer": opt_meta, "note": "x"})
    tensors, config = load_checkpoint(tmp_path / "ckpt")
    assert config["note"] == "x" and config["format_version"] == 2

    model2, opt2 = trained_model()
    with torch.no_grad():
        model2.encoding.table.zero_()
    model2.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("optimizer.")})
    restore_optimizer(opt2, tensors, config["optimizer"])
    assert torch.equal(model2.encoding.table, model.encoding.table)
    assert opt2.n_steps == 3 and opt2.ema.n_updates == 3
    state, state2 = opt.state_dict()["adam"]["state"], opt2.state_dict()["adam"]["state"]
    for key in state:
        assert torch.equal(state[key]["exp_avg_sq"], state2[key]["exp_avg_sq"])
        assert state[key]["step"] == state2[key]["step"]
        if "param_steps" in state[key]:  # the table's per-entry step counts survive a resume
            assert torch.equal(state[key]["param_steps"], state2[key]["param_steps"])
            assert state2[key]["param_steps"].dtype == torch.int32
    assert any("param_steps" in entry for entry in state2.values())


def test_checkpoint_holds_no_pickle(tmp_path):
    model, _ = trained_model()
    state = model.state_dict()
    folder = save_checkpoint(tmp_path / "c", state, {"note": "x"})
    # The file names belong to the checkpoint module: find them by kind.
    files = sorted(folder.iterdir())
    assert {p.suffix for p in files} == {".json", ".safetensors"} and len(files) == 2, files
    meta_file, tensors_file = files if files[0].suffix == ".json" else files[::-1]
    assert json.loads(meta_file.read_text())["note"] == "x"
    assert_safetensors_holding(tensors_file, state)
    with no_unpickling():
        tensors, meta = load_checkpoint(folder)
    assert meta["note"] == "x" and set(tensors) == set(state)
    for name, value in state.items():
        assert torch.equal(tensors[name], value), name


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint.json").write_text('{"format_version": 2}')
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_checkpoint(tmp_path / "broken")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "broken")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_output_dir_under_a_file_is_rejected(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises((PermissionError, NotADirectoryError), match="file"):
        prepare_output_dir(tmp_path / "file" / "run")
