"""A live web viewer for every primitive (``ngp view RUN``, ``--viewer`` on training), built on viser.

* :mod:`ngp.viewer.camera`: the browser's camera as a :class:`~ngp.geometry.cameras.Cameras`;
* :mod:`ngp.viewer.views`: what is shown of a NeRF, an SDF or an image, rendered for any camera;
* :mod:`ngp.viewer.server`: the server, its panel, and the scheduling of frames (coarse while the
  camera moves, refined when it rests, within a time budget while training).

Example::

    >>> from ngp.viewer import Viewer, view_from_run
    >>> Viewer(view_from_run("runs/builtin")).serve_forever()   # open the printed URL
"""

from ngp.viewer.camera import ViewCamera
from ngp.viewer.server import Viewer
from ngp.viewer.views import ImageView, NerfView, SdfView, view_from_run, view_from_task

__all__ = ["ImageView", "NerfView", "SdfView", "ViewCamera", "Viewer", "view_from_run", "view_from_task"]
