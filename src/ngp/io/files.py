"""Writing files so that a crash or an error never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    The temporary name keeps ``path``'s suffix so that writers choosing a format by extension work.

    Example:
        >>> with atomic_path(out / "image.png") as tmp:
        ...     imageio.imwrite(tmp, pixels)
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results should follow the umask
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


#: Where :func:`atomic_folder` keeps the previous folder while it swaps in the new one.
OLD_SUFFIX = ".old"


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; when the block succeeds it replaces ``path`` whole,
    when it fails it is deleted and ``path`` is left as it was. ``path`` never holds a mix of old
    and new files.

    A folder cannot be renamed over a non-empty one, so the swap is two renames: old -> ``NAME.old``,
    new -> ``NAME``. A crash between the two leaves only ``NAME.old``: readers that must survive
    that (checkpoints) fall back to it, and the next successful write removes it.

    Example:
        >>> with atomic_folder(run / "frames") as tmp:
        ...     write_png(tmp / "frame_0000.png", frame)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; results follow the umask
        old = path.with_name(path.name + OLD_SUFFIX)
        if path.exists():
            if old.exists():  # a leftover from an earlier crash; path is the good copy
                shutil.rmtree(old)
            os.replace(path, old)
        try:
            os.replace(staging, path)
        except OSError:
            if old.exists() and not path.exists():
                with contextlib.suppress(OSError):
                    os.replace(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON, atomically (numpy/torch scalars and paths become numbers and strings)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def prepare_output_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) and check it is writable, before any expensive work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output path exists and is not a folder: {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise PermissionError(f"cannot write to output folder {path}: {error.strerror or error}") from None
    return path


def check_writable_file(path: str | Path) -> Path:
    """Check that ``path``'s folder exists (creating it) and is writable; returns ``path``."""
    path = Path(path)
    prepare_output_dir(path.parent if str(path.parent) else Path("."))
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"output path is a folder, expected a file: {path}")
    return path
