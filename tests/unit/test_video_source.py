"""The playlist marks repeated passes of a clip, so they never enter a headline figure."""
from edge_client.video_source import VideoSource

SCENE = "synthetic:seed=1,w=32,h=18,fps=5,duration=1,shift=0"
OTHER = "synthetic:seed=2,w=32,h=18,fps=5,duration=1,shift=0"


def test_repeated_passes_are_marked_whether_listed_twice_or_looped():
    frames = list(VideoSource([SCENE, OTHER, SCENE], (18, 32)))
    assert [f.repeat for f in frames] == [False] * 10 + [True] * 5
    looped = list(VideoSource([SCENE], (18, 32), loops=3))
    assert [f.repeat for f in looped] == [False] * 5 + [True] * 10
    assert [round(f.timestamp_s, 1) for f in looped[4:6]] == [0.8, 1.0]   # the clock runs on across passes
