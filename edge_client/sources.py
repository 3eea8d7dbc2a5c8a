"""What `ams-edge --source` and `EdgeClient.run` accept, resolved to a frame source.

- a video file; a directory (its video files in name order); a playlist file (`.m3u`, `.txt`: one path
  or URL a line, `#` comments, paths relative to the playlist): played back to back, `loops` times;
- `synthetic:key=value,...`: a generated scene with exact labels (tests, the evaluation);
- a stream URL (`rtsp://`, `rtmp://`, `http(s)://`, `udp://`, `srt://`, ...) or a V4L2 camera
  (`/dev/videoN`): live, read by `StreamSource` with FFmpeg input options (`rtsp_transport=tcp`,
  `video_size=640x480`, ...), reconnecting when it drops.
"""
from __future__ import annotations

import os
import threading

from edge_client.live_source import StreamSource, is_live
from edge_client.video_source import VideoSource

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".ts", ".m4v", ".h264", ".264", ".mpg", ".mpeg", ".flv")
PLAYLIST_EXTENSIONS = (".m3u", ".txt")


def _playlist(path: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [line if is_live(line) or line.startswith("synthetic:") or os.path.isabs(line) else os.path.join(base, line)
            for line in lines if line and not line.startswith("#")]


def expand(specs: list[str]) -> list[str]:
    """Directories and playlist files replaced by what they list; anything else as given. A path that is
    not there is a ValueError naming it."""
    out: list[str] = []
    for spec in specs:
        if is_live(spec) and not spec.startswith("/dev/"):
            out.append(spec)
        elif spec.startswith("synthetic:"):
            out.append(spec)
        elif os.path.isdir(spec):
            files = sorted(os.path.join(spec, n) for n in os.listdir(spec) if n.lower().endswith(VIDEO_EXTENSIONS))
            if not files:
                raise ValueError(f"{spec}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
            out += files
        elif spec.lower().endswith(PLAYLIST_EXTENSIONS) and os.path.isfile(spec):
            out += expand(_playlist(spec))
        elif os.path.exists(spec):
            out.append(spec)
        else:
            raise ValueError(f"{spec}: no such file, directory or device")
    if not out:
        raise ValueError("no source given")
    return out


def open_source(specs: str | list[str] | tuple[str, ...], size_hw: tuple[int, int], *, loops: int = 1,
                max_seconds: float | None = None, time_scale: float = 1.0, options: dict[str, str] | None = None,
                stop: threading.Event | None = None) -> VideoSource | StreamSource:
    """The frame source for `specs` at the student's input size. A live source stands alone."""
    items = expand([specs] if isinstance(specs, str) else list(specs))
    live = [s for s in items if is_live(s)]
    if live:
        if len(items) > 1:
            raise ValueError(f"a live source ({live[0]}) cannot be part of a playlist")
        if time_scale != 1.0:
            raise ValueError("time_scale applies to files, not to a live source")
        return StreamSource(live[0], size_hw, options=options, max_seconds=max_seconds, stop=stop)
    if options:
        raise ValueError("input options apply to a live source (stream URL or /dev/videoN)")
    return VideoSource(items, size_hw, loops=loops, max_seconds=max_seconds, time_scale=time_scale)
