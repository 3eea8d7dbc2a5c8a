"""A student that is not one of the paper's, through the whole AMS loop: torchvision's LR-ASPP MobileNetV3
(`lraspp_mnv3`, a custom student the trainer builds) is adapted by the trainer and updated on the edge."""
import json


from ams.models import build_student
from ams.v1 import streaming_pb2
from edge_client.client import EdgeClient, EdgeOptions
from edge_client.link import TrainerLink
from edge_client.runtime import EdgeRuntime
from edge_client.video_source import VideoSource
from services.trainer import metrics
from tests.conftest import device_tls
from tests.integration.test_edge_live import LONG_SCENE, servers  # noqa: F401 - the fixture

LRASPP = {"num_classes": 2, "width_mult": 0.25, "inter_channels": 16, "input_height": 36, "input_width": 64}


def test_lraspp_mobilenet_v3_is_adapted_by_the_trainer_and_updated_on_the_edge(servers, pki):  # noqa: F811
    _, trainer_addr = servers
    failures = metrics.PHASE_FAILURES._value.get()
    spec = streaming_pb2.StudentSpec(architecture="lraspp_mnv3", config_json=json.dumps(LRASPP))
    link = TrainerLink(trainer_addr, "lraspp-device", spec, device_tls(pki, "lraspp-device"))
    try:
        link.open()
        w0 = {k: v.clone() for k, v in link.holder.canonical.state_dict().items()}
        source = VideoSource([LONG_SCENE.spec()], (LRASPP["input_height"], LRASPP["input_width"]))
        summary = EdgeRuntime(EdgeClient.on_link(link, EdgeOptions(mode="replay", progress=False)), source).run()
        link.wait_processed(summary["clips_uploaded"], timeout_s=60)
    finally:
        link.close()
    assert link.holder.architecture == "lraspp_mnv3" and summary["frames"] == LONG_SCENE.num_frames
    assert link.stats.updates >= 3 and link.holder.version >= 3
    assert metrics.PHASE_FAILURES._value.get() == failures
    params = dict(build_student("lraspp_mnv3", LRASPP).named_parameters())
    changed = sum(int((link.holder.canonical.state_dict()[k] != w0[k]).sum()) for k in params)
    total = sum(p.numel() for p in params.values())
    assert 0 < link.holder.last_update_size <= 0.05 * total < changed   # sparse updates (γ 5 %), adding up
