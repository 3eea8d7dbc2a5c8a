"""The long-scene playlist's compositing (ams/eval/longscene.py) and its recorded labels (ams/label_track.py)."""
import numpy as np
import pytest

from ams import label_track
from ams.eval.longscene import EDGE_S, Cutout, Visit, composite, schedule
from services.teacher.backends import TeacherInput, make_backend


def _bank() -> list[Cutout]:
    """One 'person': a 20×10 block, green, its mask a rectangle with a notch."""
    mask = np.ones((20, 10), np.uint8)
    mask[:5, :3] = 0
    rgb = np.zeros((20, 10, 3), np.uint8)
    rgb[...] = (0, 255, 0)
    return [Cutout("block", 10.0, [rgb, rgb], [mask, mask])]


def test_the_label_is_exactly_where_a_person_was_pasted():
    background = np.full((72, 128, 3), 100, np.uint8)
    visit = Visit(0, 0.0, 30.0, 0.5, 0.5, True, False, 0.0, 20.0, 0.0)
    frame, label = composite(background, 10.0, [visit], _bank())
    pasted = np.any(frame != 100, axis=2)
    assert label.any() and np.array_equal(pasted, label == 1)
    assert np.all(frame[label == 1] == (0, 255, 0))
    ys, xs = np.nonzero(label)
    assert abs(xs.mean() - 64) < 4 and ys.max() >= 70            # centred, standing on the bottom edge
    assert not composite(background, 31.0, [visit], _bank())[1].any()   # gone after t_out


def test_a_visit_walks_in_from_its_edge_and_out_again():
    visit = Visit(0, 10.0, 60.0, 0.5, 0.6, True, False, 0.0, 20.0, 0.0)
    assert visit.position(9.9) is None and visit.position(60.0) is None
    assert visit.position(10.0)[0] < 0 and visit.position(10.0 + EDGE_S)[0] == pytest.approx(0.5)
    assert visit.position(60.0 - 1e-6)[0] > 1     # leaves to the right


def test_the_schedule_fills_the_film_with_visits_and_gaps():
    visits = schedule(596.0, 3, seed=23)
    assert all(0 <= v.t_in < v.t_out <= 596.0 for v in visits) and len(visits) >= 8
    assert {v.cutout for v in visits} == {0, 1, 2}
    gaps = sum(1 for t in np.arange(0, 596, 1.0) if not any(v.t_in <= t < v.t_out for v in visits))
    assert 10 < gaps < 200                                      # some seconds with nobody in the scene


def test_a_label_track_is_read_back_by_capture_time_by_the_oracle_teacher(tmp_path):
    labels = [np.full((6, 8), i % 2, np.uint8) for i in range(48)]
    path = str(tmp_path / "track.npz")
    assert label_track.write(path, 24.0, ["background", "person"], labels, {"seed": 1}) == 48
    track = label_track.LabelTrack(path)
    assert track.num_frames == 48 and track.meta == {"seed": 1} and track.classes == ["background", "person"]
    assert np.array_equal(track.at(1.0 / 24), labels[1]) and np.array_equal(track.at(47 / 24), labels[47])
    with pytest.raises(ValueError, match="outside"):
        track.at(2.5)
    oracle = make_backend("oracle", scene_spec="labels:" + path)
    out = oracle.infer_batch([TeacherInput(np.zeros((12, 16, 3), np.uint8), 3 / 24),
                              TeacherInput(np.zeros((6, 8, 3), np.uint8), 9.0)])
    assert out[0].class_map.shape == (12, 16) and out[0].class_map.all()     # resized to the frame
    assert isinstance(out[1], ValueError)                                    # outside the clip: that item only
    with pytest.raises(ValueError, match="uint8"):
        label_track.write(path, 24.0, ["a"], [np.zeros((2, 2), np.int32)])
