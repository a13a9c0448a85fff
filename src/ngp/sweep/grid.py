"""A sweep's grid: ``--set KEY=V1,V2,...`` options parsed, expanded into their cross product, validated.

Each ``--set`` names one dotted config key (``encoding.log2_hashmap_size``, ``training.batch_size``)
and its values; every value is read as JSON where it parses (``14`` -> 14, ``1e-2`` -> 0.01,
``true`` -> True, ``null`` -> None) and as a plain string otherwise (``Prime``). A combination is one
value per key and one repeat; it becomes a config dict (``{"encoding": {"log2_hashmap_size": 14}}``)
merged over the primitive's defaults like a ``--config`` file, and a short readable folder name
(``encoding.log2_hashmap_size=14__repeat=0``).

Example:
    >>> sets = [parse_set("encoding.log2_hashmap_size=14,16"), parse_set("network.n_neurons=32,64")]
    >>> [c.name for c in expand(sets, repeats=1)][1]
    'encoding.log2_hashmap_size=14__network.n_neurons=64__repeat=0'
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ngp.config import ConfigError

#: Characters kept in a run folder's name; anything else becomes ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+\-]")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
#: ``training`` keys a sweep owns: the data is the sweep's argument, not a setting.
RESERVED_KEYS = ("training.data",)


@dataclass(frozen=True)
class SweepSet:
    """One ``--set``: a dotted config key and the values it takes, in the order given."""

    key: str
    values: tuple[Any, ...]


@dataclass
class Combination:
    """One run of a sweep: one value per swept key (``settings``, in ``--set`` order) and a repeat index."""

    settings: dict[str, Any]
    repeat: int
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)


def parse_value(text: str) -> Any:
    """A value from the command line: JSON where it parses (numbers, true/false, null, quoted strings,
    lists), else the text itself.

    Example:
        >>> parse_value("14"), parse_value("true"), parse_value("Prime")
        (14, True, 'Prime')
    """
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_set(text: str) -> SweepSet:
    """``"encoding.log2_hashmap_size=14,16,18"`` -> ``SweepSet("encoding.log2_hashmap_size", (14, 16, 18))``.

    Values are split at commas outside brackets and quotes (``[1,2],[3,4]`` is two lists). Raises
    ValueError for a missing ``=``, a key that is not dotted names, an empty value, or a repeated value.
    """
    key, sep, rest = text.partition("=")
    key = key.strip()
    if not sep:
        raise ValueError(f"--set {text!r}: expected KEY=V1,V2,... (e.g. encoding.log2_hashmap_size=14,16)")
    if not _KEY.match(key):
        raise ValueError(f"--set {text!r}: {key!r} is not a dotted config key (e.g. encoding.log2_hashmap_size)")
    if key in RESERVED_KEYS:
        raise ValueError(f"--set {text!r}: {key} is the sweep's DATA argument, not a setting to sweep")
    parts = _split_values(rest)
    if any(not p.strip() for p in parts):
        raise ValueError(f"--set {text!r}: empty value (expected KEY=V1,V2,... with no empty entries)")
    values = tuple(parse_value(p) for p in parts)
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise ValueError(f"--set {text!r}: a value is given twice")
    return SweepSet(key, values)


def _split_values(text: str) -> list[str]:
    """Split at top-level commas: not inside ``[]``/``{}`` or double quotes."""
    parts, depth, quoted, current = [], 0, False, []
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "[{":
            depth += 1
        elif not quoted and char in "]}":
            depth -= 1
        if char == "," and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def expand(sets: Sequence[SweepSet], repeats: int = 1) -> list[Combination]:
    """The cross product of ``sets`` times ``repeats``: the first key varies slowest, repeats fastest.

    Raises ValueError for a key given twice, a key nested in another (``encoding`` and
    ``encoding.otype``), ``repeats < 1``, or two combinations whose folder names collide.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"--repeats must be a positive integer, got {repeats!r}")
    keys = [s.key for s in sets]
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if a == b or b.startswith(a + ".") or a.startswith(b + "."):
                raise ValueError(f"--set {a} and --set {b} overlap: give each setting once")
    combos = []
    for values in itertools.product(*(s.values for s in sets)):
        settings = dict(zip(keys, values))
        for repeat in range(repeats):
            combos.append(Combination(settings, repeat, run_name(settings, repeat), nested_config(settings)))
    names = [c.name for c in combos]
    if len(set(names)) != len(names):
        clash = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"two combinations would share the run folder {clash!r}: give values that differ in "
                         "letters, digits or . _ = + -")
    return combos


def run_name(settings: Mapping[str, Any], repeat: int) -> str:
    """``{"encoding.log2_hashmap_size": 14}, 0`` -> ``"encoding.log2_hashmap_size=14__repeat=0"``."""
    parts = [f"{key}={_short(value)}" for key, value in settings.items()] + [f"repeat={repeat}"]
    return _UNSAFE.sub("_", "__".join(parts))


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def nested_config(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys -> a config dict: ``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}``."""
    config: dict[str, Any] = {}
    for key, value in settings.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = copy.deepcopy(value)
    return config


def check_paths(settings: Mapping[str, Any], defaults: Mapping[str, Any], primitive: str) -> None:
    """Every dotted key's parents must be JSON objects in the primitive's defaults (``encoding.x`` needs an
    ``encoding`` section): a key through a value, or through a missing section, is a ConfigError."""
    for key in settings:
        node: Any = defaults
        path = []
        for name in key.split(".")[:-1]:
            path.append(name)
            if not isinstance(node, Mapping) or name not in node or not isinstance(node[name], Mapping):
                raise ConfigError(f"{primitive} config: --set {key}: {'.'.join(path)!r} is not a config section")
            node = node[name]
