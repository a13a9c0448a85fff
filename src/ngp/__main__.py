"""``python -m ngp ...`` is the ``ngp`` command."""

from ngp.cli import main

main()
