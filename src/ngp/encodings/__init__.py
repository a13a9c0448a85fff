"""Input encodings, each an :class:`Encoding` built from a tiny-cuda-nn-style config."""

from ngp.encodings.base import Encoding, build_encoding, register_encoding
from ngp.encodings.composite import Composite
from ngp.encodings.frequency import Frequency
from ngp.encodings.grid import DenseGrid, Grid, HashGrid
from ngp.encodings.identity import Identity
from ngp.encodings.spherical_harmonics import SphericalHarmonics, real_spherical_harmonics

__all__ = [
    "Composite", "DenseGrid", "Encoding", "Frequency", "Grid", "HashGrid", "Identity",
    "SphericalHarmonics", "build_encoding", "real_spherical_harmonics", "register_encoding",
]
