"""The image primitive (the paper's "gigapixel image" task): fit ``(x, y) -> colour`` to a photo.

    >>> from ngp.image import fit_image, render_image
    >>> metrics = fit_image("builtin:astronaut", "runs/astronaut", seconds=60)
    >>> picture = render_image("runs/astronaut", 2048, 2048, display=True)

Command line: ``ngp image fit IMAGE --out RUN``, ``ngp image render RUN --width W --height H --out FILE``.
"""

from ngp.image.data import ImageTarget, pixel_centres
from ngp.image.model import build_image_model, image_config
from ngp.image.render import load_image_model, render_image, render_to_file
from ngp.image.trainer import ImageTask, build_image_task, fit_image

__all__ = [
    "ImageTarget", "ImageTask", "build_image_model", "build_image_task", "fit_image", "image_config",
    "load_image_model", "pixel_centres", "render_image", "render_to_file",
]
