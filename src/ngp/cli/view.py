"""``ngp view RUN``: the live web viewer on a finished or interrupted run of any primitive."""

from __future__ import annotations

from ngp.cli.common import Device, Host, Port, Run, log, reporting


def view(run: Run, host: Host = "127.0.0.1", port: Port = 8080, device: Device = "auto") -> None:
    """Serve a web viewer of RUN (NeRF: free camera, training cameras, RGB/depth, occupancy grid; SDF: the
    sphere-traced surface and mesh.ply; image: the fit beside its target, at any zoom). Ctrl-C to stop.

    Example: ngp view runs/builtin   (then open http://127.0.0.1:8080)
    """
    from ngp.viewer import Viewer, view_from_run
    from ngp.viewer.server import check_host

    with reporting():
        check_host(host, port)
        viewer = Viewer(view_from_run(run, device, log=log), host, port, log=log)
        try:
            viewer.serve_forever()
        finally:
            viewer.close()
