"""The ``ngp`` command line: ``ngp image|sdf|nerf ...`` and ``ngp view RUN``.

:mod:`ngp.cli.common` defines the options every command shares and the one way errors are reported;
``ngp.cli.image``, ``ngp.cli.sdf`` and ``ngp.cli.nerf`` hold one primitive's commands each. The CLI only
parses, calls a primitive, and reports; the work lives in the primitives.
"""

from __future__ import annotations

import typer

from ngp.cli import collisions, image, nerf, sdf, sweep, view

app = typer.Typer(
    name="ngp",
    help="Instant neural graphics primitives: fit images, SDFs and NeRFs with a multiresolution hash encoding.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(image.app, name="image", help="Fit a gigapixel-style image and render it at any resolution.")
app.add_typer(sdf.app, name="sdf", help="Learn a signed distance function from a mesh; extract and render its surface.")
app.add_typer(nerf.app, name="nerf", help="Train a neural radiance field from posed photos; evaluate, render and mesh it.")
app.command(name="view", no_args_is_help=True)(view.view)
app.command(name="sweep", no_args_is_help=True)(sweep.sweep)
app.command(name="collisions", no_args_is_help=True)(collisions.collisions)
app.command(name="hash-search", no_args_is_help=True)(collisions.hash_search)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
