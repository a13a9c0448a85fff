"""A minimal viser client for tests: sends camera poses as a browser does and collects the frames it gets.

It speaks viser's wire protocol through viser's own message classes (camera messages out; zstd-compressed
msgpack windows in, see ``viser.infra._infra._message_producer``), so it needs no browser.
"""

from __future__ import annotations

import io
import socket
import time

import msgspec
import numpy as np
import zstandard
from PIL import Image
from websockets.sync.client import connect


def free_port() -> int:
    """A port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ViserTestClient:
    def __init__(self, port: int, host: str = "127.0.0.1"):
        import viser

        self.ws = connect(f"ws://{host}:{port}", subprotocols=[f"viser-v{viser.__version__}"], max_size=None,
                          open_timeout=10)
        self.messages: list[dict] = []

    def send_camera(self, wxyz, position, fov: float, width: int, height: int, look_at=(0.0, 0.0, 0.0),
                    up=(0.0, 1.0, 0.0)) -> None:
        from viser._messages import ViewerCameraMessage

        message = ViewerCameraMessage(wxyz=tuple(map(float, wxyz)), position=tuple(map(float, position)),
                                      fov=float(fov), near=0.01, far=1000.0, image_height=int(height),
                                      image_width=int(width), look_at=tuple(map(float, look_at)),
                                      up_direction=tuple(map(float, up)))
        self.ws.send(msgspec.msgpack.encode({"type": "ViewerCameraMessage", **message.as_serializable_dict()}))

    def receive(self, timeout: float) -> list[dict]:
        """The messages of one window (``[]`` on timeout)."""
        try:
            data = self.ws.recv(timeout=timeout)
        except TimeoutError:
            return []
        n_inner, n_compressed = int.from_bytes(data[:8], "little"), int.from_bytes(data[8:16], "little")
        inner = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(data[16:16 + n_compressed],
                                                                              max_output_size=n_inner))
        self.messages.extend(inner["messages"])
        return inner["messages"]

    def wait_for(self, predicate, timeout: float = 30.0) -> dict:
        """The first message (already received or arriving within ``timeout`` s) that satisfies ``predicate``."""
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    self.messages.remove(message)
                    return message
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching message within {timeout} s; got types "
                                   f"{sorted({m['type'] for m in self.messages})}")
            self.receive(min(left, 1.0))

    def next_frame(self, timeout: float = 30.0) -> np.ndarray:
        """The next background image sent: ``[H, W, 3]`` uint8."""
        message = self.wait_for(lambda m: m["type"] == "BackgroundImageMessage" and m.get("rgb_data"), timeout)
        return np.asarray(Image.open(io.BytesIO(message["rgb_data"])).convert("RGB"))

    def close(self) -> None:
        self.ws.close()
