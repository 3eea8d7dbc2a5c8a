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


def test_time_scale_plays_files_in_slow_motion(tmp_path):
    """Video files run `time_scale` times slower on the algorithm's clock; synthetic scenes keep their
    own time (their oracle labels by it); a non-positive scale is refused."""
    import numpy as np
    import pytest

    from ams.video import encode_clip

    path = tmp_path / "clip.h264"
    path.write_bytes(encode_clip([np.full((18, 32, 3), 40 * i, np.uint8) for i in range(4)], fps=10))
    normal = [f.timestamp_s for f in VideoSource([str(path)], (18, 32))]
    slow = [f.timestamp_s for f in VideoSource([str(path)], (18, 32), time_scale=4.0)]
    assert len(slow) == len(normal) == 4 and slow[1] > 0
    assert np.allclose(slow, [4 * t for t in normal])
    synthetic = [f.timestamp_s for f in VideoSource([SCENE], (18, 32), time_scale=4.0)]
    assert np.allclose(synthetic, [0, 0.2, 0.4, 0.6, 0.8])
    with pytest.raises(ValueError):
        VideoSource([SCENE], (18, 32), time_scale=0)


def test_synthetic_scene_shifts_domain_every_period_and_stands_still():
    import numpy as np

    from ams.synthetic import SyntheticScene

    scene = SyntheticScene.from_spec("synthetic:seed=3,w=64,h=36,fps=5,duration=60,period=10,still_from=20,still_to=40")
    frames = {t: scene.render(t) for t in (1, 9, 11, 21, 39, 41)}
    colour = {t: frames[t][0][frames[t][1] == 0].mean(0) for t in frames}     # the background's colour
    assert np.abs(colour[1] - colour[9]).max() < 15 < np.abs(colour[9] - colour[11]).max()   # a new domain at 10 s
    assert (frames[21][1] == frames[39][1]).all()                 # still: the labels do not move
    assert (frames[39][1] != frames[41][1]).any() or (frames[1][1] != frames[9][1]).any()
    assert scene.motion_time(30) == 20 and scene.motion_time(45) == 25
