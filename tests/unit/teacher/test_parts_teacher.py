"""The parts teacher (services/teacher/parts.py) on real frames with the mediapipe wheel's real models:
a close-up's head sits above its torso, every person pixel of the selfie model gets a part, an empty
street gets none, and its probabilities are a distribution."""
import numpy as np
import pytest

from edge_client.video_source import VideoSource
from services.teacher.backends import TeacherInput, make_backend
from services.teacher.parts import ARMS, HEAD, LEGS, PART_CLASSES, TORSO, nearest_part

SELFIE = "assets/teacher/selfie_segmentation_landscape.tflite"


@pytest.fixture(scope="module")
def parts():
    backend = make_backend("parts", SELFIE, threads=1)
    backend.load()
    yield backend
    backend.close()


def _frame(video: str, index: int) -> np.ndarray:
    return next(f.rgb for f in VideoSource([video], (144, 256)) if f.index == index)


def test_a_close_up_gets_a_head_above_its_torso_and_every_person_pixel_a_part(parts):
    assert parts.classes == PART_CLASSES == ["background", "head", "torso", "arms", "legs"]
    rgb = _frame("data/videos/carphone_pristine.mp4", 40)
    out = parts.infer_batch([TeacherInput(rgb, 0.0)])[0]
    selfie = make_backend("litert", SELFIE, threads=1)
    selfie.load()
    person = selfie.infer_batch([TeacherInput(rgb, 0.0)])[0].class_map == 1
    assert ((out.class_map > 0) == person).all()     # parts split the selfie model's person, never move it
    rows = np.arange(rgb.shape[0])[:, None].repeat(rgb.shape[1], 1)
    head, torso = out.class_map == HEAD, out.class_map == TORSO
    assert head.mean() > 0.05 and torso.mean() > 0.03, np.bincount(out.class_map.ravel(), minlength=5)
    assert rows[head].mean() < rows[torso].mean() - 10     # the face is above the chest
    assert out.probabilities.shape == (5, 144, 256)
    np.testing.assert_allclose(out.probabilities.sum(0), 1.0, atol=1e-5)
    assert (out.probabilities.argmax(0)[person] == out.class_map[person]).mean() > 0.99


def test_the_detector_finds_the_close_up_person_with_the_hips_below_the_frame(parts):
    rgb = _frame("data/videos/carphone_pristine.mp4", 40)
    people = parts._detector(rgb, 6)
    assert len(people) >= 1
    hips, circle = people[0]
    assert hips[1] > rgb.shape[0] * 0.6          # a talking head: the hips are at or below the frame's bottom
    assert np.hypot(*(circle - hips)) > rgb.shape[0] * 0.4


def test_frames_without_people_are_background_and_bad_items_fail_alone(parts):
    empty = TeacherInput(np.zeros((72, 128, 3), np.uint8), 0.0)
    bad = TeacherInput(np.zeros((72, 128), np.uint8), 0.0)
    results = parts.infer_batch([empty, bad])
    assert (results[0].class_map == 0).all() and isinstance(results[1], ValueError)


def test_each_pixel_takes_the_part_of_the_nearest_visible_bone():
    xy = np.zeros((39, 2), np.float32)
    vis = np.zeros(39, np.float32)
    # an upright figure 60 px tall in a 100×100 frame: face at the top, shoulders, hips, knees, one arm
    for i, p in {0: (50, 10), 7: (45, 10), 8: (55, 10), 11: (40, 25), 12: (60, 25), 23: (43, 50), 24: (57, 50),
                 25: (43, 70), 26: (57, 70), 13: (30, 40), 15: (25, 55)}.items():
        xy[i], vis[i] = p, 1.0
    part = nearest_part((100, 100), [(xy, vis)])
    assert part[10, 50] == HEAD and part[38, 50] == TORSO and part[60, 43] == LEGS and part[48, 27] == ARMS
    vis[:] = 0.0
    assert nearest_part((100, 100), [(xy, vis)]) is None


def test_face_parts_label_a_close_ups_eyes_brows_nose_and_mouth_in_their_places():
    from services.teacher.parts import FACE_PART_CLASSES

    faces = make_backend("parts", SELFIE, threads=1, face_parts=True)
    faces.load()
    try:
        assert faces.classes == FACE_PART_CLASSES == PART_CLASSES + ["eyes", "brows", "nose", "mouth"]
        rgb = _frame("data/videos/carphone_pristine.mp4", 40)
        out = faces.infer_batch([TeacherInput(rgb, 0.0)])[0]
        assert out.probabilities.shape == (9, 144, 256)
        counts = np.bincount(out.class_map.ravel(), minlength=9)
        assert (counts[5:] >= 20).all(), counts           # every face part, a few dozen pixels each at 144×256
        rows = np.arange(144)[:, None].repeat(256, 1)
        cols = np.arange(256)[None].repeat(144, 0)
        mean_row = {name: rows[out.class_map == 5 + k].mean() for k, name in enumerate(["eyes", "brows", "nose", "mouth"])}
        assert mean_row["brows"] < mean_row["eyes"] < mean_row["nose"] < mean_row["mouth"], mean_row
        nose_col = cols[out.class_map == 7].mean()
        eye_cols = cols[out.class_map == 5]
        assert (eye_cols < nose_col).sum() > 5 and (eye_cols > nose_col).sum() > 5     # two eyes, either side
        body = make_backend("parts", SELFIE, threads=1)
        body.load()
        plain = body.infer_batch([TeacherInput(rgb, 0.0)])[0].class_map
        assert ((out.class_map > 0) == (plain > 0)).all()        # face parts stay on the person's pixels
        assert (plain[out.class_map >= 5] == HEAD).mean() > 0.9  # ... on what the body parts call the head
        small = faces.infer_batch([TeacherInput(_frame("data/videos/carphone_pristine.mp4", 40)[::3, ::3].copy(), 0.0)])[0]
        assert small.class_map.max() <= LEGS                      # a face a few pixels wide keeps no parts
    finally:
        faces.close()
