"""What every ``ngp`` command shares: its options (defined once, here) and its error reporting.

Every training command takes ``--out --seconds --steps --config --seed --resume --force --device
--precision --checkpoint-every --eval-at --quiet --viewer --host --port``; every command that reads a run takes the run folder.
Errors that are the user's to fix (a missing file, a bad value, an unknown config key, a run folder in
the way) print one line, ``error: ...``, and exit with 1; Ctrl-C during training exits with 130 after
saving (SIGTERM: 143); Ctrl-C elsewhere exits with 130 and no traceback.

Example (a primitive's training command)::

    @app.command()
    def fit(data: str, out: Out, seconds: Seconds = None, ...):
        with reporting():
            train_run("image", build_image_task, train_request(out, seconds, ...))
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from ngp.train.session import TrainRequest

#: Errors that mean "bad input or a failed run": one line, exit code 1, no traceback.
USER_ERRORS = (OSError, ValueError, FloatingPointError, RuntimeError)


def new_app(help: str) -> typer.Typer:
    # no rich markup: help texts say "(default: ...)", which rich would take for a style tag
    return typer.Typer(help=help, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                       rich_markup_mode=None)


@contextlib.contextmanager
def reporting() -> Iterator[None]:
    """Run a command's body: user errors become one line and exit code 1; signals exit 128 + signum."""
    from ngp.train.loop import Interrupted

    try:
        yield
    except Interrupted as stop:
        typer.echo(str(stop), err=True)
        raise typer.Exit(stop.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except USER_ERRORS as error:
        if isinstance(error, RuntimeError) and not _is_user_runtime_error(error):
            raise
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


def _is_user_runtime_error(error: RuntimeError) -> bool:
    """torch reports running out of memory as RuntimeError; other RuntimeErrors are bugs: show them."""
    return "out of memory" in str(error).lower() or "DefaultCPUAllocator" in str(error)


def log(message: str) -> None:
    """Progress and summary lines (kept even with --quiet, which only hides progress bars)."""
    print(message, flush=True)
    sys.stdout.flush()


def eval_times(text: str | None) -> list[float] | None:
    """``--eval-at 300,600`` -> ``[300.0, 600.0]``."""
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated seconds, got {text!r}") from None


# -- the shared options, defined once ---------------------------------------------------------------
Out = Annotated[Path, typer.Option("--out", "-o", help="Run folder to write (checkpoint/, metrics.json, "
                                   "training.png, pictures).", show_default=False)]
Seconds = Annotated[Optional[float], typer.Option("--seconds", "-s", help="Training time for this session, in "
                                                  "seconds (default: the config's training.seconds).")]
Steps = Annotated[Optional[int], typer.Option("--steps", "-n", help="Training steps for this session (with "
                                              "--seconds: whichever ends first).")]
Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="JSON config (instant-ngp's shape, "
                                                "'parent' honoured), deep-merged over the defaults.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed: weights and samples (default: 0).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an earlier run in --out.")]
Device = Annotated[str, typer.Option("--device", help="Where to run: auto (a CUDA GPU when torch sees one, else "
                                     "the CPU), cpu, cuda or cuda:N.")]
Precision = Annotated[str, typer.Option("--precision", help="Precision of the MLPs: auto (float16 with loss "
                                        "scaling on a GPU; on a CPU bfloat16 where it has bfloat16 instructions and "
                                        "the primitive was checked in it (NeRF), else float32), float32, float16 or "
                                        "bfloat16.")]
CheckpointEvery = Annotated[Optional[float], typer.Option("--checkpoint-every", help="Seconds between periodic "
                                                          "checkpoints (0: only at the end) (default: 60).")]
EvalAt = Annotated[Optional[str], typer.Option("--eval-at", help="Also evaluate at these training times, e.g. "
                                               "300,600 (seconds, counted over all sessions of the run).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Run = Annotated[Path, typer.Argument(help="Run folder written by a training command.", show_default=False)]
ViewerFlag = Annotated[bool, typer.Option("--viewer", help="Serve the live web viewer while training (URL printed; "
                                          "see --host/--port).")]
Host = Annotated[str, typer.Option("--host", help="Viewer address to listen on: 127.0.0.1 is this machine only; "
                                   "0.0.0.0 makes it reachable from other machines.")]
Port = Annotated[int, typer.Option("--port", help="Viewer port.")]


def train_request(out: Path, seconds: float | None, steps: int | None, config: Path | None, seed: int | None,
                  resume: bool, force: bool, device: str, precision: str, checkpoint_every: float | None,
                  eval_at: str | None, quiet: bool, viewer: bool = False, host: str = "127.0.0.1",
                  port: int = 8080, **primitive_options) -> TrainRequest:
    """The shared options as a :class:`~ngp.train.session.TrainRequest`; ``primitive_options`` are
    further ``training`` keys (None = not given)."""
    from ngp.train.session import ViewerAddress
    from ngp.viewer.server import check_host

    overrides = {"seconds": seconds, "steps": steps, "seed": seed, "checkpoint_every": checkpoint_every,
                 "eval_at": eval_times(eval_at), **primitive_options}
    if viewer:
        check_host(host, port)
    return TrainRequest(out=out, config=config, overrides=overrides, resume=resume, force=force, device=device,
                        precision=precision, progress=not quiet,
                        viewer=ViewerAddress(host, port) if viewer else None)
