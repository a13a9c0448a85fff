"""Input encodings, each an :class:`Encoding` built from a tiny-cuda-nn-style config."""

from ngp.encodings.base import (
    Encoding,
    Module,
    build_encoding,
    free_temporary_memory,
    register_encoding,
    supports_jit_fusion,
)
from ngp.encodings.composite import Composite
from ngp.encodings.frequency import Frequency
from ngp.encodings.grid import DenseGrid, Grid, HashGrid, TiledGrid
from ngp.encodings.identity import Identity
from ngp.encodings.oneblob import OneBlob, TriangleWave
from ngp.encodings.spherical_harmonics import SphericalHarmonics, real_spherical_harmonics
from ngp.encodings.takikawa import Takikawa

__all__ = [
    "Composite", "DenseGrid", "Encoding", "Frequency", "Grid", "HashGrid", "Identity", "Module", "OneBlob",
    "SphericalHarmonics", "Takikawa", "TiledGrid", "TriangleWave", "build_encoding", "free_temporary_memory",
    "real_spherical_harmonics", "register_encoding", "supports_jit_fusion",
]
