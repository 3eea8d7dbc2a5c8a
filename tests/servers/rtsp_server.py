"""A real RTSP server for the edge's live-source tests: GStreamer's RTSP server (Debian's
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-good/-bad; run with the system Python, which has
PyGObject) publishing an H.264 MP4 at its own pace over RTP. Each client gets its own pipeline from
the clip's start. Prints "ready" once listening; stop it with SIGTERM.

    /usr/bin/python3 tests/servers/rtsp_server.py PORT /stream clip.mp4
"""
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, mount, clip = sys.argv[1:4]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( filesrc location={clip} ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory.set_shared(False)
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        sys.exit(f"rtsp_server: cannot listen on 127.0.0.1:{port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
