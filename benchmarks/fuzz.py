"""`make fuzz`: property-based fuzzing of every RPC of both services, on live servers.

Hypothesis builds requests for ModelStreaming (OpenSession, UploadClip, StreamUpdates,
CloseSession) and Teacher (LabelFrames, DescribeTeacher) four ways: random messages built from
the protobuf descriptors (with realistic values mixed in: live session ids, checkpoint names,
student configs, real H.264 clips and frames), valid messages with mutated bytes, valid messages
(so that sessions, uploads and training phases run alongside), and raw bytes.
They go over mutual TLS to a teacher and a trainer running as processes (ams.ops.procs), from
several device certificates and a service certificate.

Every call must end in a status a client can act on, never INTERNAL or UNKNOWN, with details
under 300 characters; both servers must stay up with bounded memory, and a well-behaved device
must still get its session, upload accepted and update afterwards. Writes out/fuzz/summary.json.
    python -m benchmarks.fuzz --cases 10000 [--out out/fuzz] [--readme]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import time

import grpc
import numpy as np
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from ams import tls
from ams.grpc_common import channel_options
from ams.synthetic import SyntheticScene
from ams.tensors import encode_frame
from ams.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc, teacher_pb2
from ams.video import encode_clip
from ams.ops.procs import ROOT, ams_stack, device_files, service_files
from ams.docblocks import write_block_from_results

SCENE = SyntheticScene(seed=9, w=64, h=36, fps=10, duration=60, shift=30)
DEVICES = [f"fuzz-{i}" for i in range(4)]
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
TRAINER_ENV = {"AMS_ALLOW_CUSTOM_STUDENTS": "true", "AMS_MAX_STUDENT_PARAMS": "300000", "AMS_MAX_STUDENT_PIXELS": "16384",
               "AMS_MAX_OPENS_PER_MINUTE": "100000", "AMS_T_UPDATE_S": "2", "AMS_T_HORIZON_S": "10", "AMS_K_ITERS": "1",
               "AMS_BATCH_SIZE": "2", "AMS_TORCH_THREADS": "1", "AMS_MAX_MESSAGE_MB": "16",
               "AMS_CHECKPOINT_DIR": "assets/students"}
TEACHER_ENV = {"AMS_TEACHER_BACKEND": "oracle", "AMS_TEACHER_SCENE": SCENE.spec(), "AMS_TEACHER_MAX_MESSAGE_MB": "4"}
TINY = {"num_classes": 2, "width_mult": 0.25, "aspp_channels": 16, "input_height": 36, "input_width": 64}
METHODS = {  # full method name -> (request class, server streaming)
    f"/ams.v1.ModelStreaming/{m}": (streaming_pb2, m) for m in ("OpenSession", "UploadClip", "StreamUpdates", "CloseSession")
} | {f"/ams.v1.Teacher/{m}": (teacher_pb2, m) for m in ("LabelFrames", "DescribeTeacher")}


# --- strategies ---------------------------------------------------------------------------------
def _clips() -> list[bytes]:
    times = [[0.0, 0.5], [1.0], [2.0, 2.5, 3.0]]
    return [encode_clip([SCENE.render(t)[0] for t in ts], bit_rate=300_000) for ts in times]


CLIPS = _clips()
FRAMES = [encode_frame(SCENE.render(t)[0], t, enc).SerializeToString()
          for t, enc in ((0.0, common_pb2.Frame.PNG), (1.0, common_pb2.Frame.RAW_RGB8), (2.0, common_pb2.Frame.JPEG))]
INTS = st.one_of(st.integers(-3, 300), st.sampled_from([-(2 ** 63), -(2 ** 31), 2 ** 31 - 1, 2 ** 32, 2 ** 63 - 1]))
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", "h264", "H264", "vp9", "deeplabv3_mnv2", "streamdeq",
                                                        "lowlatency", "deeplabv3_mnv2_selfie", "../../etc/passwd"]),
                 st.integers(1, 200_000).map(lambda n: "x" * n))
BYTES = st.one_of(st.binary(max_size=512), st.sampled_from(CLIPS), st.integers(1, 2_000_000).map(bytes))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 120))
CONFIG_VALUES = st.one_of(st.integers(-5, 5000), st.floats(allow_nan=True), st.text(max_size=8), st.none(),
                          st.booleans(), st.lists(st.integers(), max_size=3))
CONFIGS = st.one_of(
    st.dictionaries(st.sampled_from(sorted(TINY) + ["output_stride", "depth", "width_mult", "pretrained"]), CONFIG_VALUES,
                    max_size=5).map(lambda d: json.dumps({**TINY, **d}, allow_nan=True)),
    st.just(json.dumps(TINY)), st.text(max_size=60))


def _scalar(field: FieldDescriptor, pools: dict) -> st.SearchStrategy:
    name = field.name
    if name in ("session_id", "resume_session_id"):   # a live session (of any device) or made-up text
        return st.one_of(st.integers(0, 15).map(lambda i: (pools["sids"] or [""])[i % max(len(pools["sids"]), 1)]), TEXT)
    if name == "config_json":
        return CONFIGS
    if name == "timestamps_s":
        return FLOATS
    kinds = {FieldDescriptor.TYPE_STRING: TEXT, FieldDescriptor.TYPE_BYTES: BYTES, FieldDescriptor.TYPE_BOOL: st.booleans(),
             FieldDescriptor.TYPE_DOUBLE: FLOATS, FieldDescriptor.TYPE_FLOAT: FLOATS}
    if field.type in kinds:
        return kinds[field.type]
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-2, 6)
    bounds = {FieldDescriptor.TYPE_INT32: (-(2 ** 31), 2 ** 31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2 ** 32 - 1),
              FieldDescriptor.TYPE_UINT64: (0, 2 ** 64 - 1)}.get(field.type, (-(2 ** 63), 2 ** 63 - 1))
    return INTS.filter(lambda v: bounds[0] <= v <= bounds[1])


def message_strategy(descriptor, pools: dict, depth: int = 0) -> st.SearchStrategy:
    """Random messages of `descriptor`: any subset of fields, values from `_scalar`, nested to depth 3."""
    cls = message_factory.GetMessageClass(descriptor)
    fields = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            value = message_strategy(field.message_type, pools, depth + 1)
            if field.message_type.name == "Frame":
                value = st.one_of(value, st.sampled_from(FRAMES).map(common_pb2.Frame.FromString))
        else:
            value = _scalar(field, pools)
        repeated = field.is_repeated
        fields[field.name] = st.lists(value, max_size=300 if field.name == "timestamps_s" else 5) if repeated else value

    def build(kwargs: dict):
        message = cls()
        for key, value in kwargs.items():
            target = getattr(message, key)
            if isinstance(value, list):
                target.extend(value)
            elif hasattr(value, "SerializeToString"):
                target.CopyFrom(value)
            else:
                setattr(message, key, value)
        return message
    return st.fixed_dictionaries({}, optional=fields).map(build)


def valid_request(method: str, pools: dict, rng: random.Random) -> bytes:
    """A well-formed request of `method` (the seed that mutations start from)."""
    sid = rng.choice(pools["sids"] or [""])
    if method.endswith("OpenSession"):
        spec = rng.choice([streaming_pb2.StudentSpec(checkpoint="deeplabv3_mnv2_selfie"),
                           streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json=json.dumps(TINY))])
        codecs = rng.sample(range(6), rng.randint(0, 3))   # known and unknown UpdateCodec values, or none
        return streaming_pb2.OpenSessionRequest(student=spec, update_codecs=codecs).SerializeToString()
    if method.endswith("UploadClip"):
        i = rng.randrange(len(CLIPS))
        stamps = [[0.0, 0.5], [1.0], [2.0, 2.5, 3.0]][i]
        return streaming_pb2.UploadClipRequest(session_id=sid, clip_seq=rng.randint(1, 50), clip=common_pb2.EncodedClip(
            codec="h264", data=CLIPS[i], timestamps_s=stamps)).SerializeToString()
    if method.endswith("StreamUpdates"):
        return streaming_pb2.StreamUpdatesRequest(session_id=sid, held_version=rng.randint(0, 3)).SerializeToString()
    if method.endswith("CloseSession"):
        return streaming_pb2.CloseSessionRequest(session_id=sid).SerializeToString()
    if method.endswith("LabelFrames"):
        return teacher_pb2.LabelFramesRequest(frames=[common_pb2.Frame.FromString(rng.choice(FRAMES))]).SerializeToString()
    return teacher_pb2.DescribeTeacherRequest().SerializeToString()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Bit flips, truncation, duplication or splicing of a serialized message."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):]
        elif op == 2 and b:
            i = rng.randrange(len(b))
            b[i:i] = b[i:i + rng.randint(1, 64)] * rng.randint(1, 4)
        elif op == 3:
            b[rng.randrange(len(b) + 1):0] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
        elif b:
            b[rng.randrange(len(b))] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
    return bytes(b)


# --- the run ------------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


class Fuzzer:
    def __init__(self, stack: dict):
        self.stack = stack
        options = channel_options(32 * 1024 * 1024)
        self.channels = {name: tls.channel(stack["trainer"], device_files(stack, name), options) for name in DEVICES}
        self.channels["service"] = tls.channel(stack["trainer"], service_files(stack), options)
        self.teacher = tls.channel(stack["teacher"], service_files(stack), options)
        self.teacher_as_device = tls.channel(stack["teacher"], device_files(stack, DEVICES[0]), channel_options())
        self.pools: dict = {"sids": []}
        self.codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.modes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.failures: list[dict] = []
        self.examples: dict[str, str] = {}     # "method CODE" -> the first status details seen
        self.pids = {"trainer": stack["trainer_pid"], "teacher": stack["teacher_pid"]}
        self.rss_trace: list[dict] = []        # servers' RSS (MB) every 1000 cases
        self.cases = 0

    def call(self, method: str, data: bytes, who: str, mode: str = "valid") -> None:
        if method.startswith("/ams.v1.Teacher/"):
            channel = self.teacher_as_device if who == "device" else self.teacher
        else:
            channel = self.channels[who]
        streaming = method.endswith("StreamUpdates")
        factory = channel.unary_stream if streaming else channel.unary_unary
        rpc = factory(method, request_serializer=None, response_deserializer=None)
        code, details = grpc.StatusCode.OK, ""
        try:
            if streaming:
                stream = rpc(data, timeout=2)
                for i, _ in enumerate(stream):
                    if i >= 2:
                        stream.cancel()
                        break
            else:
                reply = rpc(data, timeout=30)
                if method.endswith("OpenSession"):
                    sid = streaming_pb2.OpenSessionResponse.FromString(reply).session_id
                    self.pools["sids"] = (self.pools["sids"] + [sid])[-16:]
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if streaming and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                code = grpc.StatusCode.OK     # a live update stream runs until the client stops reading
        self.cases += 1
        if self.cases % 1000 == 0:
            self.rss_trace.append({"cases": self.cases, **{k: round(_rss_mb(p)) for k, p in self.pids.items()
                                                          if os.path.exists(f"/proc/{p}")}})
        self.codes[method.rsplit("/", 1)[1]][code.name] += 1
        self.modes[mode][code.name] += 1
        self.examples.setdefault(f"{method.rsplit('/', 1)[1]} {code.name}", details[:160])
        if code in BAD_CODES or len(details) > 300:
            self.failures.append({"method": method, "who": who, "code": code.name, "details": details[:300],
                                  "request_hex": data[:200].hex(), "request_bytes": len(data)})

    def run(self, cases: int, seed: int) -> None:
        methods = sorted(METHODS)
        strategies = {m: message_strategy(mod.DESCRIPTOR.services_by_name[
            "Teacher" if "Teacher/" in m else "ModelStreaming"].methods_by_name[name].input_type, self.pools)
            for m, (mod, name) in METHODS.items()}

        @settings(max_examples=cases, deadline=None, database=None, derandomize=False, print_blob=False,
                  suppress_health_check=list(HealthCheck))
        @hypothesis_seed(seed)
        @given(data=st.data())
        def case(data):
            method = data.draw(st.sampled_from(methods))
            who = data.draw(st.sampled_from(DEVICES + ["service"]) if "ModelStreaming" in method
                            else st.sampled_from(["service", "service", "device"]))
            # the kind of request comes from a Random seeded by Hypothesis (its own choices lean to the first
            # option; a Random it controls would draw more or less as the live session pool changes)
            r = random.Random(data.draw(st.integers(0, 2 ** 32 - 1)))
            mode = r.choices(["message", "mutated", "valid", "raw"], weights=[40, 25, 20, 15])[0]
            if mode == "valid":
                payload = valid_request(method, self.pools, r)
            elif mode == "message":
                payload = data.draw(strategies[method]).SerializeToString()
            elif mode == "mutated":
                payload = mutate(valid_request(method, self.pools, r), r)
            else:
                payload = data.draw(st.binary(max_size=256))
            self.call(method, payload, who, mode)
        case()


def known_attacks(stack: dict) -> dict:
    """The hostile requests of issue 9, each with its status code and the trainer's RSS growth."""
    stub_channel = tls.channel(stack["trainer"], device_files(stack, "attacker"), channel_options(32 * 1024 * 1024))
    stub = streaming_pb2_grpc.ModelStreamingStub(stub_channel)
    pid = stack["trainer_pid"]

    def code(call) -> str:
        try:
            call()
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name
    spec = lambda **cfg: streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json=json.dumps(cfg))  # noqa: E731
    results, before = {}, _rss_mb(pid)
    results["student width_mult=4, aspp_channels=4096"] = code(lambda: stub.OpenSession(
        streaming_pb2.OpenSessionRequest(student=spec(width_mult=4, aspp_channels=4096)), timeout=60))
    results["student num_classes=-3"] = code(lambda: stub.OpenSession(
        streaming_pb2.OpenSessionRequest(student=spec(num_classes=-3)), timeout=60))
    sid = stub.OpenSession(streaming_pb2.OpenSessionRequest(student=streaming_pb2.StudentSpec(
        checkpoint="deeplabv3_mnv2_selfie")), timeout=60).session_id
    clip = encode_clip([np.zeros((1080, 1920, 3), np.uint8)] * 120, bit_rate=50_000)
    for name, stamps in (("120 timestamps", [float(i) for i in range(120)]), ("1 timestamp", [0.0])):
        request = streaming_pb2.UploadClipRequest(session_id=sid, clip_seq=1, clip=common_pb2.EncodedClip(
            codec="h264", data=clip, timestamps_s=stamps))
        results[f"{len(clip) // 1024} KB clip of 120 black 1080p frames, {name}"] = code(
            lambda request=request: stub.UploadClip(request, timeout=60))
    results["UploadClip with a 1 MB session id"] = code(lambda: stub.UploadClip(streaming_pb2.UploadClipRequest(
        session_id="x" * 1_000_000, clip_seq=1), timeout=30))
    opens = collections.Counter(code(lambda: stub.OpenSession(streaming_pb2.OpenSessionRequest(
        student=streaming_pb2.StudentSpec(checkpoint="deeplabv3_mnv2_selfie")), timeout=60)) for _ in range(40))
    results["40 OpenSession calls by one device"] = dict(opens)
    with tls.channel(stack["trainer"], device_files(stack, "bystander"), channel_options(32 * 1024 * 1024)) as channel:
        results["then another device opens its session"] = code(lambda: streaming_pb2_grpc.ModelStreamingStub(
            channel).OpenSession(streaming_pb2.OpenSessionRequest(student=streaming_pb2.StudentSpec(
                checkpoint="deeplabv3_mnv2_selfie")), timeout=60))
    stub_channel.close()
    return {"codes": results, "trainer_rss_mb": {"before": round(before), "after": round(_rss_mb(pid))}}


def good_device_round_trip(stack: dict) -> dict:
    """After the fuzzing: a well-behaved device opens a session, uploads and gets an update."""
    from edge_client.link import TrainerLink
    spec = streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json=json.dumps(TINY))
    link = TrainerLink(stack["trainer"], "well-behaved", spec, device_files(stack, "well-behaved"), timeout_s=30)
    try:
        link.open()
        times = [0.0, 1.0]
        accepted = link.upload(1, encode_clip([SCENE.render(t)[0] for t in times]), times, SCENE.w, SCENE.h)
        processed = link.wait_processed(1, timeout_s=120)
        deadline = time.monotonic() + 60
        while link.holder.version < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        return {"upload_accepted": bool(accepted), "processed": bool(processed), "version": link.holder.version}
    finally:
        link.close()


def fuzz(cases: int, out: str, seed: int = 0) -> dict:
    """Start the stack, fuzz it with `cases` requests, write and return the summary."""
    os.makedirs(out, exist_ok=True)
    started = time.time()
    with ams_stack(os.path.join(out, "logs"), TEACHER_ENV, TRAINER_ENV, devices=DEVICES + ["well-behaved"]) as stack:
        fuzzer = Fuzzer(stack)
        # warm-up: every fuzzing device holds a session on the installed checkpoint and has uploaded a clip,
        # so RSS "before" is the steady state of the sessions the fuzzing keeps replacing
        checkpoint = streaming_pb2.OpenSessionRequest(student=streaming_pb2.StudentSpec(checkpoint="deeplabv3_mnv2_selfie"))
        for device in DEVICES:
            fuzzer.call("/ams.v1.ModelStreaming/OpenSession", checkpoint.SerializeToString(), device)
            fuzzer.call("/ams.v1.ModelStreaming/UploadClip", valid_request("UploadClip", {"sids": fuzzer.pools["sids"][-1:]},
                                                                          random.Random(seed)), device)
        for method in sorted(METHODS):
            fuzzer.call(method, valid_request(method, fuzzer.pools, random.Random(seed)),
                        "service" if "Teacher/" in method else DEVICES[-1])
        time.sleep(5)                               # the warm-up's training phases
        pids = fuzzer.pids
        attacks = known_attacks(stack)
        rss_before = {k: _rss_mb(p) for k, p in pids.items()}
        fuzz_started = time.time()
        fuzzer.run(cases, seed)
        fuzz_seconds = time.time() - fuzz_started
        alive = {k: os.path.exists(f"/proc/{p}") for k, p in pids.items()}
        rss_after = {k: _rss_mb(p) if alive[k] else None for k, p in pids.items()}
        good = good_device_round_trip(stack) if all(alive.values()) else {}
    summary = {
        "cases": fuzzer.cases, "fuzz_seconds": round(fuzz_seconds, 1), "wall_seconds": round(time.time() - started, 1),
        "internal_or_unknown": sum(f["code"] in ("INTERNAL", "UNKNOWN") for f in fuzzer.failures),
        "failures": fuzzer.failures[:50], "crashes": sum(not a for a in alive.values()),
        "codes": {m: dict(sorted(c.items())) for m, c in sorted(fuzzer.codes.items())},
        "codes_by_kind": {m: dict(sorted(c.items())) for m, c in sorted(fuzzer.modes.items())},
        "examples": dict(sorted(fuzzer.examples.items())),
        "rss_mb": {k: {"before": round(rss_before[k]), "after": rss_after[k] and round(rss_after[k])} for k in pids},
        "rss_trace_mb": fuzzer.rss_trace,
        "good_device_after": good, "hypothesis_seed": seed, "known_attacks": attacks,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def check(summary: dict, max_rss_growth_mb: float = 300) -> list[str]:
    """What is wrong with a fuzz run (empty: passed)."""
    problems = []
    if summary["failures"]:
        problems.append(f"{len(summary['failures'])} calls answered INTERNAL/UNKNOWN or over-long details: "
                        f"{summary['failures'][:3]}")
    if summary["crashes"]:
        problems.append(f"{summary['crashes']} server(s) died")
    for name, rss in summary["rss_mb"].items():
        if rss["after"] is not None and rss["after"] - rss["before"] > max_rss_growth_mb:
            problems.append(f"{name} RSS grew {rss['before']} -> {rss['after']} MB")
    for name, got in summary["known_attacks"]["codes"].items():
        if got in ("OK", "INTERNAL", "UNKNOWN", "UNAVAILABLE") and "open" not in name.lower():
            problems.append(f"{name}: answered {got}")
    attack_rss = summary["known_attacks"]["trainer_rss_mb"]
    if attack_rss["after"] - attack_rss["before"] > max_rss_growth_mb:
        problems.append(f"the known attacks grew the trainer {attack_rss}")
    if summary["known_attacks"]["codes"]["then another device opens its session"] != "OK":
        problems.append("a device could not open its session after another opened 40")
    good = summary["good_device_after"]
    if not (good.get("upload_accepted") and good.get("processed") and good.get("version", 0) >= 1):
        problems.append(f"a well-behaved device was not served afterwards: {good}")
    return problems


def readme_table(summary: dict) -> str:
    rows = ["| RPC | calls | status codes |", "|---|---|---|"]
    for method, codes in summary["codes"].items():
        rows.append(f"| {method} | {sum(codes.values())} | {', '.join(f'{k} {v}' for k, v in codes.items())} |")
    rss = summary["rss_mb"]
    rows += ["", "| the hostile requests of issue 9 | answer |", "|---|---|"]
    rows += [f"| {name} | {got if isinstance(got, str) else ', '.join(f'{k} {v}' for k, v in got.items())} |"
             for name, got in summary["known_attacks"]["codes"].items()]
    attack_rss = summary["known_attacks"]["trainer_rss_mb"]
    rows.append(f"\nTrainer RSS across those: {attack_rss['before']} → {attack_rss['after']} MB.")
    rows.append("")
    rows.append(f"{summary['cases']} cases in {summary['fuzz_seconds']:.0f} s: **{summary['internal_or_unknown']} INTERNAL/"
                f"UNKNOWN, {summary['crashes']} crashes**; "
                f"RSS trainer {rss['trainer']['before']} → {rss['trainer']['after']} MB, "
                f"teacher {rss['teacher']['before']} → {rss['teacher']['after']} MB; a well-behaved device afterwards: "
                f"{summary['good_device_after']}.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(ROOT, "out", "fuzz"))
    p.add_argument("--readme", action="store_true", help="only write --out's summary into README.md")
    args = p.parse_args(argv)
    if args.readme:
        write_block_from_results("fuzz", os.path.join(args.out, "summary.json"), readme_table)
        return 0
    summary = fuzz(args.cases, args.out, args.seed)
    problems = check(summary)
    print(json.dumps({k: summary[k] for k in ("cases", "fuzz_seconds", "internal_or_unknown", "crashes", "rss_mb",
                                              "good_device_after")}, indent=1))
    for problem in problems:
        print("FUZZ FAILURE:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
