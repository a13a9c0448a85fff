"""The training target of the image primitive: an image as a continuous function on ``[0, 1]^2``.

Pixel-centre convention: pixel ``(i, j)`` (row ``i``, column ``j``) of an ``H x W`` image covers
``[j/W, (j+1)/W) x [i/H, (i+1)/H)`` and its centre is ``((j + 0.5)/W, (i + 0.5)/H)``; ``x`` runs along
columns, ``y`` down the rows. Between pixel centres the target is bilinearly interpolated; outside the
outermost centres it is clamped (the border pixels extend to the image edge).

The image is stored once, in its own sample type (``uint8``, ``uint16``, ``float16`` or ``float32``),
sharing the memory of the array it is given (CPU); only the gathered samples of a batch and the pixels
of one row chunk are converted to float32, so a 100-megapixel 8-bit photo costs 300 MB and a
gigapixel one 3 GB (12 GB as float32).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ngp.io.images import ImageData, value_scale

#: Points processed per chunk when interpolating, so temporaries stay small for any batch size.
CHUNK = 1 << 20


class ImageTarget:
    """Random continuous samples of an image and its pixels at their centres.

    Values are returned as float32 in the stored data's ``[0, 1]`` scale (``uint8`` / 255,
    ``uint16`` / 65535, floats as they are).

    Example:
        >>> target = ImageTarget(read_image("builtin:astronaut"))
        >>> xy, rgb = target.sample(4096, torch.Generator().manual_seed(0))
        >>> xy.shape, rgb.shape, rgb.dtype
        (torch.Size([4096, 2]), torch.Size([4096, 3]), torch.float32)
    """

    def __init__(self, image: ImageData | np.ndarray, device: torch.device | str = "cpu"):
        array = image.array if isinstance(image, ImageData) else np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or 0 in array.shape:
            raise ValueError(f"ImageTarget expects an [H, W, C] image, got shape {list(array.shape)}")
        self.height, self.width, self.channels = (int(s) for s in array.shape)
        self.scale = value_scale(array.dtype)
        if self.height < 2 or self.width < 2:
            # The pair gather below needs 2 x 2 pixels; a 1-pixel-wide image is copied with its edge
            # repeated (only such degenerate images are ever copied).
            array = np.pad(array, ((0, self.height < 2), (0, self.width < 2), (0, 0)), mode="edge")
        #: Zero-copy view ``[H, W, C]`` of the stored samples, in their own type.
        self.stored = torch.from_numpy(np.ascontiguousarray(array)).to(device)
        self.device = self.stored.device
        stored_h, self._stride, c = self.stored.shape
        # Overlapping view: row k holds pixels k and k + 1 of the row-major image, so one gather
        # fetches both horizontal neighbours (fewer, more local random reads than four gathers).
        self._pairs = self.stored.view(-1, c).as_strided((stored_h * self._stride - 1, 2, c), (c, c, 1))

    @property
    def n_pixels(self) -> int:
        return self.height * self.width

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` uniform random positions -> ``(xy [n, 2] in [0, 1)^2, values [n, C] float32)``, on
        the target's device (drawn on the generator's device, then moved if they differ)."""
        if n < 1:
            raise ValueError(f"sample size must be positive, got {n}")
        xy = torch.rand(n, 2, generator=generator, device=generator.device if generator is not None else self.device)
        xy = xy.to(self.device)
        return xy, self.interpolate(xy)

    def interpolate(self, xy: torch.Tensor) -> torch.Tensor:
        """Bilinear interpolation between pixel centres: ``[n, 2]`` positions -> ``[n, C]`` float32."""
        if xy.dim() != 2 or xy.shape[1] != 2:
            raise ValueError(f"positions must have shape [n, 2], got {list(xy.shape)}")
        xy = xy.to(self.device)
        out = torch.empty(xy.shape[0], self.channels, dtype=torch.float32, device=self.device)
        for start in range(0, xy.shape[0], CHUNK):
            self._interpolate_chunk(xy[start : start + CHUNK], out[start : start + CHUNK])
        return out

    def _interpolate_chunk(self, xy: torch.Tensor, out: torch.Tensor) -> None:
        # Continuous pixel coordinates whose integer points are pixel centres, clamped to the outer
        # centres (the border pixels extend to the image edge).
        px = (xy[:, 0].float() * self.width - 0.5).clamp_(0.0, self.width - 1)
        py = (xy[:, 1].float() * self.height - 0.5).clamp_(0.0, self.height - 1)
        # The top-left corner stays one pixel inside, so that corner + 1 exists; at the last pixel
        # the weight becomes 1 instead, which gives the same value.
        x0 = px.floor().clamp_(max=max(self.width - 2, 0))
        y0 = py.floor().clamp_(max=max(self.height - 2, 0))
        fx = (px - x0).unsqueeze(1)
        fy = (py - y0).unsqueeze(1)
        top_left = y0.long() * self._stride + x0.long()  # int64: exact beyond 2^24 pixels
        top = self._pairs.index_select(0, top_left).float()
        bottom = self._pairs.index_select(0, top_left + self._stride).float()
        upper = torch.lerp(top[:, 0], top[:, 1], fx)
        lower = torch.lerp(bottom[:, 0], bottom[:, 1], fx)
        torch.lerp(upper, lower, fy, out=out)
        if self.scale != 1.0:
            out.mul_(self.scale)

    def pixel_centres(self, rows: slice) -> torch.Tensor:
        """Positions of the pixel centres of ``rows`` (row-major): ``[n_rows * W, 2]`` float32."""
        start, stop, _ = rows.indices(self.height)
        return pixel_centres(self.width, self.height, start, stop).to(self.device)

    def pixels(self, rows: slice) -> torch.Tensor:
        """The stored pixels of ``rows`` as float32 ``[n_rows * W, C]`` (row-major)."""
        start, stop, _ = rows.indices(self.height)
        values = self.stored[start:stop, : self.width].reshape(-1, self.channels).float()
        return values.mul_(self.scale) if self.scale != 1.0 else values

    def row_chunks(self, max_pixels: int = CHUNK) -> Iterator[slice]:
        """Row slices of at most ``max_pixels`` pixels (at least one row), covering the image."""
        rows = max(1, max_pixels // self.width)
        for start in range(0, self.height, rows):
            yield slice(start, min(start + rows, self.height))


def pixel_centres(width: int, height: int, row_start: int = 0, row_stop: int | None = None) -> torch.Tensor:
    """``((j + 0.5) / W, (i + 0.5) / H)`` for rows ``row_start <= i < row_stop``, all ``j``:
    ``[(row_stop - row_start) * W, 2]`` float32, row-major."""
    row_stop = height if row_stop is None else row_stop
    x = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    y = (torch.arange(row_start, row_stop, dtype=torch.float64) + 0.5) / height
    grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1).float()
