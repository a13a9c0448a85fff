"""Orbit videos: the depth range of any number of depths, frames streamed to disk, the frames folder
holding exactly one render's frames."""

from __future__ import annotations

import gc
import weakref

import imageio_ffmpeg
import pytest
import torch

from ngp.nerf.field import NerfField
from ngp.nerf.renderer import Renderer, RenderSettings
from ngp.nerf.video import depth_range, orbit_poses, write_video

#: A field small enough to render 16x16 frames in well under a second each.
TINY_CONFIG = {
    "encoding": {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
                 "base_resolution": 4, "per_level_scale": 1.5},
    "network": {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1},
    "rgb_network": {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1},
}
AABB = torch.tensor([[-1.0] * 3, [1.0] * 3])
SIZE, FOCAL = 16, 20.0
#: The fake renderer's frames: more pixels than a depth preview renders, so the two are told apart.
FAKE = 96


def ring_poses(n: int) -> torch.Tensor:
    """``[n, 3, 4]`` an orbit at distance 3 around the origin (built from a ring of training cameras)."""
    angles = torch.arange(8) * (2 * torch.pi / 8)
    position = torch.stack([3 * angles.cos(), 3 * angles.sin(), torch.zeros(8)], dim=-1)
    forward = -position / 3
    up = torch.tensor([0.0, 0.0, 1.0]).expand(8, 3)
    right = torch.linalg.cross(forward, up)
    c2w = torch.stack([right, up, -forward, position], dim=-1)  # OpenGL: the camera looks along -z
    return orbit_poses(c2w, n, AABB)


@pytest.fixture(scope="module")
def renderer():
    torch.manual_seed(0)
    field = NerfField(AABB, config=TINY_CONFIG)
    return Renderer(field, None, RenderSettings(step_size=0.1))


def frame_files(folder):
    return sorted(p.name for p in folder.iterdir())


def video_frames(path) -> int:
    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


class FakeRenderer:
    """Stands in for :class:`Renderer`: constant frames of the camera's size, depths 1..2, and a note
    of the calls and of which earlier frames are still alive when the next one is rendered."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at, self.calls, self.alive_before, self._frames = fail_at, [], [], []

    def render_image(self, cameras, index, background, chunk=None):
        h, w = int(cameras.height[index]), int(cameras.width[index])
        self.calls.append((index, h, w))
        if (h, w) == (FAKE, FAKE):  # a frame of the video, not of the depth preview
            if index == self.fail_at:
                raise RuntimeError("rendering failed")
            gc.collect()
            self.alive_before.append(sum(ref() is not None for ref in self._frames))
        depth = torch.linspace(1.0, 2.0, h * w).reshape(h, w)
        color = torch.full((h, w, 3), index / 10)
        if (h, w) == (FAKE, FAKE):
            self._frames += [weakref.ref(depth), weakref.ref(color)]
        return {"color": color, "opacity": torch.ones(h, w), "depth": depth, "n_samples": h * w}


# ----------------------------------------------------------------------------------------------------
# The depth range
# ----------------------------------------------------------------------------------------------------


def test_depth_range_of_more_depths_than_torch_quantile_takes():
    """A 60-frame 800x800 orbit has 38M depths; torch.quantile refuses more than 2^24 values."""
    depths = torch.linspace(1.0, 3.0, 1 << 25)
    depths[::8] = 0.0  # missed rays (depth 0) do not count
    hits = depths[depths > 0]
    assert hits.numel() > 1 << 24
    with pytest.raises(RuntimeError):
        hits.quantile(0.5)  # the limit this helper exists for
    del hits
    near, far = depth_range(depths)
    # exact quantiles of the hit depths (uniform on [1, 3]) are 1.02 and 2.98; a random subsample
    # of 2^20 of them has a standard error of ~2e-4 on each
    assert near == pytest.approx(1.02, abs=2e-3) and far == pytest.approx(2.98, abs=2e-3)


def test_depth_range_without_hits_and_of_small_inputs():
    assert depth_range(torch.zeros(5, 5)) == (0.0, 1.0)
    near, far = depth_range(torch.tensor([[0.0, 2.0], [4.0, 0.0]]), low=0.0, high=1.0)
    assert (near, far) == (2.0, 4.0)
    with pytest.raises(ValueError, match="quantiles"):
        depth_range(torch.ones(3), low=0.9, high=0.1)


# ----------------------------------------------------------------------------------------------------
# The video and the frames folder
# ----------------------------------------------------------------------------------------------------


def test_rerender_with_fewer_frames_leaves_no_stale_frames(renderer, tmp_path):
    out, frames = tmp_path / "orbit.mp4", tmp_path / "orbit_frames"
    for n in (4, 2):
        stats = write_video(renderer, ring_poses(n), FOCAL, SIZE, SIZE, out, torch.zeros(3), frames,
                            progress=False)
        assert stats["frames"] == n
        expected = sorted([f"depth_{i:04d}.png" for i in range(n)] + [f"frame_{i:04d}.png" for i in range(n)])
        assert frame_files(frames) == expected
        assert video_frames(out) == n
        assert frame_files(tmp_path) == ["orbit.mp4", "orbit_frames"]  # no temporary folders or files


def test_a_failed_render_leaves_the_previous_video_and_frames(tmp_path):
    out, frames = tmp_path / "orbit.mp4", tmp_path / "orbit_frames"
    write_video(FakeRenderer(), ring_poses(3), FOCAL, FAKE, FAKE, out, torch.zeros(3), frames, progress=False)
    before = {p.name: p.read_bytes() for p in [out, *frames.iterdir()]}
    failing = FakeRenderer(fail_at=1)
    with pytest.raises(RuntimeError, match="rendering failed"):
        write_video(failing, ring_poses(2), FOCAL, FAKE, FAKE, out, torch.zeros(3), frames, progress=False)
    assert (0, FAKE, FAKE) in failing.calls  # it failed mid-way: frame 0 was already encoded and written
    assert {p.name: p.read_bytes() for p in [out, *frames.iterdir()]} == before
    assert frame_files(tmp_path) == ["orbit.mp4", "orbit_frames"]


def test_frames_are_not_all_held_in_memory(tmp_path):
    fake = FakeRenderer()
    write_video(fake, ring_poses(5), FOCAL, FAKE, FAKE, tmp_path / "o.mp4", torch.zeros(3), tmp_path / "f",
                progress=False)
    assert max(fake.alive_before) <= 2, fake.alive_before  # at most the previous frame's colour and depth
    assert len(fake.alive_before) == 5


def test_depth_pictures_use_one_range_for_all_frames(tmp_path):
    """Every depth picture maps the same depth to the same grey: the range is chosen once."""
    import imageio.v3 as iio

    write_video(FakeRenderer(), ring_poses(3), FOCAL, FAKE, FAKE, tmp_path / "o.mp4", torch.zeros(3),
                tmp_path / "f", progress=False)
    pictures = [iio.imread(tmp_path / "f" / f"depth_{i:04d}.png") for i in range(3)]
    assert all((p == pictures[0]).all() for p in pictures)
    assert pictures[0][0, 0, 0] > pictures[0][-1, -1, 0]  # near bright, far dark


def test_a_frames_folder_with_other_files_is_refused_before_rendering(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "notes.txt").write_text("mine")
    fake = FakeRenderer()
    with pytest.raises(ValueError, match="notes.txt"):
        write_video(fake, ring_poses(2), FOCAL, FAKE, FAKE, tmp_path / "o.mp4", torch.zeros(3), frames,
                    progress=False)
    assert fake.calls == [] and (frames / "notes.txt").read_text() == "mine"
    assert frame_files(tmp_path) == ["frames"]
