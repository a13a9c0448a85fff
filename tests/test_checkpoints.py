"""Checkpoints: safetensors + JSON round trip, optimizer state for resuming, clear errors."""

import contextlib
import json
import math
import pickle
import sys

import pytest
import torch

import ngp
from ngp.io.checkpoints import (
    flatten_optimizer_state, load_checkpoint, restore_optimizer, save_checkpoint,
)
from ngp.io.files import atomic_path, prepare_output_dir


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


#: Bytes per element of each safetensors dtype (the format's specification).
SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                        "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def assert_safetensors_holding(path, tensors) -> None:
    """``path`` is a safetensors file and nothing else: an 8-byte little-endian header length, a JSON
    header, then the raw bytes of exactly ``tensors`` (dict name -> tensor), back to back to the end
    of the file (no room for a pickle anywhere)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert len(raw) >= 8 + n, f"{path}: header length {n} beyond the end of the file"
    header = json.loads(raw[8:8 + n])
    assert isinstance(header.get("__metadata__", {}), dict)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    assert set(entries) == set(tensors), f"{path}: tensors {sorted(entries)} != {sorted(tensors)}"
    end = 0
    for name, entry in sorted(entries.items(), key=lambda item: item[1]["data_offsets"]):
        begin, stop = entry["data_offsets"]
        assert begin == end, f"{path}: {name} starts at {begin}, not right after the previous tensor ({end})"
        assert stop - begin == math.prod(entry["shape"]) * SAFETENSORS_ITEMSIZE[entry["dtype"]], name
        expected = tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert raw[8 + n + begin:8 + n + stop] == expected, f"{path}: the bytes of {name} are not its values"
        end = stop
    assert 8 + n + end == len(raw), f"{path}: {len(raw) - 8 - n - end} bytes after the last tensor"


@contextlib.contextmanager
def no_unpickling():
    """Within the block any unpickling (pickle itself, or torch.load) fails the test, except Numba's
    own: its compile cache unpickles an index when a kernel is first used."""
    def refusing(original):
        def refuse(*args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("numba."):
                return original(*args, **kwargs)
            raise AssertionError("a checkpoint was unpickled")
        return refuse

    with pytest.MonkeyPatch.context() as patch:
        for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
                             (torch.serialization, "load")):
            patch.setattr(module, name, refusing(getattr(module, name)))
        yield


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
