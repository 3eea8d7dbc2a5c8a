"""EdgeRuntime through the embeddable EdgeClient, in replay mode against the real trainer service on a
loopback port (in-memory store, oracle teacher in process): every frame segmented, each interval's clip
uploaded, the updates applied in order, and the run's summary."""
from __future__ import annotations

import json

from edge_client import EdgeClient, EdgeOptions
from tests.conftest import LOCAL_SCENE, TINY_STUDENT


def test_a_replay_run_segments_every_frame_uploads_each_interval_and_applies_the_updates(local_trainer):
    address, manager = local_trainer
    source = LOCAL_SCENE.replace("duration=30", "duration=6")
    options = EdgeOptions(mode="replay", eval_every=0, hint_ttl_s=0)
    seen = []
    with EdgeClient(address, None, "", device_id="dev-runtime", architecture="deeplabv3_mnv2",
                    config_json=json.dumps(TINY_STUDENT), options=options) as client:
        summary = client.run(source, on_result=lambda frame, result: seen.append(result))
        held = client.holder.version
        session = manager.sessions[client.link.session_id]
        assert held == session.version >= 1                     # the trainer's model, as the device holds it
    assert len(seen) == summary["frames"] == 60                   # 6 s at 10 fps: each frame answered once
    assert all(r.mask.shape == (TINY_STUDENT["input_height"], TINY_STUDENT["input_width"]) for r in seen)
    assert summary["clips_uploaded"] == 3 and summary["final_version"] == held   # T_update 2 s
    assert summary["updates"] >= 1 and summary["updates_rejected"] == 0 and summary["clips_dropped"] == 0
    assert [r.model_version for r in seen] == sorted(r.model_version for r in seen)   # hot-swapped, never back
