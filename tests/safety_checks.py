"""Checks shared by tests: a checkpoint holds numbers and JSON only, and loading it never unpickles."""

import contextlib
import json
import math
import pickle
import sys

import pytest
import torch


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
