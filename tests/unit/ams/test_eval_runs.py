"""The evaluation's run cache: a run is keyed by what the playlist plays, not only by its name, so a
changed clip list or time scale is never answered from an old run."""
import dataclasses

from ams.eval import harness, runs
from ams.eval.playlists import PLAYLISTS


def test_a_run_key_changes_with_the_playlists_definition_not_its_note(monkeypatch):
    name = next(iter(PLAYLISTS))
    run = runs.spec("ams", name)
    key = run.key()
    assert key == runs.spec("ams", name).key()
    original = PLAYLISTS[name]
    for change in ({"time_scale": original.time_scale * 2}, {"sources": original.sources + ("other.mp4",)},
                   {"eval_every": original.eval_every + 1}, {"loops": original.loops + 1}):
        monkeypatch.setitem(PLAYLISTS, name, dataclasses.replace(original, **change))
        assert run.key() != key, f"{change} did not change the run's key"
    monkeypatch.setitem(PLAYLISTS, name, dataclasses.replace(original, note=original.note + " (reworded)"))
    assert run.key() == key


def test_a_run_key_changes_when_its_students_w0_is_remade(monkeypatch, tmp_path):
    """A retrained w0 under the same checkpoint name starts every scheme elsewhere: its runs are not reused."""
    run = runs.spec("no_customization", next(iter(PLAYLISTS)), "streamdeq")
    key = run.key()
    remade = tmp_path / "w0.pt"
    remade.write_bytes(open(harness.checkpoint_path("streamdeq"), "rb").read() + b"\0")
    monkeypatch.setattr(harness, "checkpoint_path", lambda name: str(remade))
    harness.checkpoint_digest.cache_clear()
    try:
        assert run.key() != key
        assert runs.spec("no_customization", next(iter(PLAYLISTS)), "streamdeq").key() == run.key()
    finally:
        harness.checkpoint_digest.cache_clear()
