"""The ``ngp`` command line: one sub-command group per primitive (``image``, ``sdf``, ``nerf``).

The CLI only parses arguments, calls a primitive, and reports; the work lives in the primitives.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="ngp",
    help="Instant neural graphics primitives: fit images, SDFs and NeRFs with a multiresolution hash encoding.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _name, _help in (
    ("image", "Fit a gigapixel-style image and render it at any resolution."),
    ("sdf", "Learn a signed distance function from a mesh; extract and render its surface."),
    ("nerf", "Train a neural radiance field from posed photos; evaluate, render and mesh it."),
):
    try:
        _module = importlib.import_module(f"ngp.{_name}.cli")
    except ModuleNotFoundError as _error:  # a primitive not yet present in this build
        if _error.name != f"ngp.{_name}.cli":
            raise
        continue
    app.add_typer(_module.app, name=_name, help=_help)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
