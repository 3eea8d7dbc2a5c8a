# AMS — every target installs what it needs; all are safe to run twice.
SHELL := /bin/bash
# the venv's Python: the first supported one present (3.11 first: this workplace's local torch wheel is for it)
PY ?= $(firstword $(foreach v,3.11 3.12 3.13 3.14,$(shell command -v python$(v) 2>/dev/null)) python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/dev.txt | sha1sum | cut -c1-12)
PROTOS := $(wildcard proto/ams/v1/*.proto)

.PHONY: help lint lock smoke install assets eval-videos redis haproxy netns-tools stream-server chaos tools proto up fuzz soak eval eval-quick eval-long long-scene demo demo-streamdeq demo-lowlatency bench-streamdeq bench-lowlatency bench-codec bench-fleet bench-train-step test test-unit test-deploy test-integration test-e2e pretrain bench clean

help:
	@echo "make demo      # the whole AMS loop on sample video (installs everything first)"
	@echo "make test      # unit + integration + end-to-end tests"
	@echo "make up        # redis + teacher + trainer as local processes with mutual TLS (out/stack/stack.json)"
	@echo "make chaos     # 3 trainer + 2 teacher replicas behind HAProxy; each process killed, Redis down 30 s, a roll, lossy device links (out/chaos/summary.json)"
	@echo "make soak      # an edge live on looping clips for SOAK_MINUTES (10): RSS and open files (out/soak/soak.json)"
	@echo "make fuzz      # long property-based fuzz run against live servers (out/fuzz/summary.json)"
	@echo "make bench-codec # update codecs: bytes, bits per index and mIoU vs float16 (out/bench/codec.json)"
	@echo "make bench-lowlatency # low-latency segmenter at 3 sizes: arrival-to-output latency, ablations (BENCH_ARGS='--device cuda')"
	@echo "make bench-streamdeq  # StreamDEQ at 3 sizes: tolerance-converged, shot change, time budget, feed-forward"
	@echo "make eval      # the paper's schemes, ablation, sweeps, rate control (out/eval/; resumable, ≤ 60 min)"
	@echo "make eval-quick # a few minutes of the same (out/eval-quick/)"
	@echo "make eval-long # every scheme on the 10-minute long-scene playlist (out/eval-long/; resumable, ≈ 40 min)"
	@echo "make proto     # regenerate ams/v1 stubs from proto/"
	@echo "make pretrain  # re-make the demo's initial student w0 (assets/students/)"

# The venv installs the locked versions of every extra (requirements/dev.txt, `make lock`), then AMS itself.
$(STAMP): pyproject.toml requirements/dev.txt
	@$(PY) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 15))' || { \
	  echo "make: AMS needs CPython 3.11-3.14 ($(PY) is $$($(PY) -V)); set PY=/path/to/python3.x" >&2; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

assets: $(STAMP)
	PIP=$(BIN)/pip ./tools/fetch_assets.sh

# The evaluation's extra real clips with people (PyPI wheels, SHA-256 checked) -> data/videos/eval/
eval-videos: $(STAMP)
	PIP=$(BIN)/pip ./tools/fetch_eval_videos.sh

# The long-scene playlist: Big Buck Bunny from moviepy's sdist (SHA-256 checked) with those people pasted in,
# rendered once (≈ 2 min) -> data/videos/eval/longscene.mp4 + longscene_labels.npz
long-scene: eval-videos assets
	PIP=$(BIN)/pip ./tools/fetch_eval_videos.sh --long-scene

# A redis-server binary for the tests and the demo (they start their own on free ports).
redis:
	@command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; }

# The gRPC load balancer in front of trainer and teacher replicas (tests, make chaos).
haproxy:
	@command -v haproxy >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy; }

# The devices' network namespace and its shaping (tc netem where the kernel has it, else nftables loss).
netns-tools:
	@command -v nft >/dev/null && command -v tc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 nftables; }

# Every process killed or cut off in turn under live load -> out/chaos/summary.json (≈ 8 min on 2 cores, root).
chaos: install assets redis haproxy netns-tools
	$(BIN)/python -m benchmarks.chaos --out out/chaos/summary.json $(BENCH_ARGS)

# A real RTSP server for the edge's live-source tests: GStreamer's (Debian), run by the system Python's PyGObject.
stream-server:
	@/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" 2>/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-gi \
	  gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad; }

# Validators for docker-compose.yml and the Prometheus files (no Docker engine needed).
tools:
	@command -v docker-compose >/dev/null && command -v promtool >/dev/null && command -v amtool >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose prometheus prometheus-alertmanager; }

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)

demo: install assets redis eval-videos
	$(BIN)/python -m ams.ops.demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install assets redis haproxy netns-tools tools stream-server lint
	$(BIN)/python -m pytest -q --durations=15 tests

# the packages' unit tests: no redis-server, no network, no deployment validators
test-unit: install assets
	$(BIN)/python -m pytest -q --durations=10 -m "not redis" tests/unit

test-deploy: install tools
	$(BIN)/python -m pytest -q tests/deploy

test-integration: install assets redis haproxy netns-tools stream-server
	$(BIN)/python -m pytest -q tests/integration

test-e2e: install assets redis
	$(BIN)/python -m pytest -q tests/e2e

pretrain: install assets
	$(BIN)/python -m ams.training.pretrain --steps 300 --video data/videos/bikes.mp4
	$(BIN)/python -m ams.training.pretrain --steps 300 --video data/videos/bikes.mp4 --arch lraspp_mnv3 --name lraspp_mnv3_selfie \
	  --config '{"num_classes": 2, "width_mult": 1.0, "input_height": 144, "input_width": 256}'

clean:
	rm -rf out .pytest_cache

bench: install assets
	$(BIN)/python -m benchmarks.parts

demo-streamdeq: install assets redis eval-videos
	$(BIN)/python -m ams.ops.demo --segmenter streamdeq --out out/demo-streamdeq

bench-streamdeq: install assets
	$(BIN)/python -m benchmarks.streamdeq $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.streamdeq --readme

bench-lowlatency: install assets
	$(BIN)/python -m benchmarks.lowlatency $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.lowlatency --readme

demo-lowlatency: install assets redis eval-videos
	$(BIN)/python -m ams.ops.demo --segmenter lowlatency --out out/demo-lowlatency

# The update codecs (float16, int8, int4, structured selection) on the evaluation's protocol, paper
# settings, 2 playlists × 6 trainer seeds -> out/bench/codec.json (runs cached in out/bench/codec/runs)
# Each part of the training graph's A/B, 144×256 and 256×512 -> out/train_step.json
bench-train-step: install assets
	$(BIN)/python -m benchmarks.train_step

bench-codec: install assets redis eval-videos
	$(BIN)/python -m benchmarks.codec --jobs $(EVAL_JOBS)
	$(BIN)/python -m benchmarks.codec --readme

# BENCH_ARGS='--device cuda': the GPU sweep (256×512, batched sessions; on a machine with one)
bench-fleet: install assets redis
	$(BIN)/python -m benchmarks.fleet $(BENCH_ARGS)

# Operator smoke test on a host with a Docker engine (Docker SDK): build both images, compose up, health,
# the edge profile, one update, down. Without an engine it says so and exits 0.
smoke: install assets
	$(BIN)/python -m ams.ops.smoke

# The server side as local processes (no Docker): certificates in out/stack/pki, stack.json beside them.
DEVICES ?= edge-1
up: install assets redis
	$(BIN)/python -m ams.ops.up --out out/stack --devices $(DEVICES)

# An edge left running: live mode on the real clips looping forever, its RSS and open files sampled
# (out/soak/soak.json); SOAK_MINUTES long, then SIGTERM (exit 0 and a complete summary expected)
SOAK_MINUTES ?= 10
soak: install assets redis eval-videos
	$(BIN)/python -m benchmarks.soak --minutes $(SOAK_MINUTES) --out out/soak

FUZZ_CASES ?= 10000
fuzz: install assets redis
	$(BIN)/python -m benchmarks.fuzz --cases $(FUZZ_CASES) --out out/fuzz

# The evaluation (paper §4): five schemes, Table 3 ablation, Fig. 4 sweeps, rate control, the three
# students, and AMS through the real services; runs are cached in out/eval/runs (interrupt and rerun
# to resume). Rewrites the results block of docs/evaluation.md from out/eval/results.json.
EVAL_JOBS ?= 2
eval: install assets redis eval-videos
	$(BIN)/python -m ams.eval --jobs $(EVAL_JOBS)
	$(BIN)/python -m ams.eval --readme

eval-quick: install assets redis eval-videos
	$(BIN)/python -m ams.eval --quick --jobs $(EVAL_JOBS)

eval-long: install assets redis long-scene
	$(BIN)/python -m ams.eval --long --jobs $(EVAL_JOBS)
	$(BIN)/python -m ams.eval --long --readme

# The lock files (pip-tools) the venv and the images install from: requirements/teacher.txt (no torch),
# trainer.txt (trainer and edge) and dev.txt (everything). torch is pinned without its local build
# label, so the CPU or a CUDA wheel of that version satisfies it (the images take it from PyTorch's index).
# teacher.txt carries every file's SHA-256 (the teacher image installs it with --require-hashes); the
# trainer's and dev locks cannot yet: their torch comes from different indexes (PyTorch's CPU index in
# the image, a local wheel here) whose files have different hashes.
LOCK := $(BIN)/pip-compile --quiet --no-emit-index-url --no-emit-find-links --strip-extras --no-header
lock: install
	$(LOCK) --generate-hashes --extra teacher -o requirements/teacher.txt pyproject.toml
	$(LOCK) --extra trainer -o requirements/trainer.txt pyproject.toml
	$(LOCK) --all-extras -o requirements/dev.txt pyproject.toml
	sed -i -E 's/^(torch==[0-9.]+)\+[a-z0-9]+$$/\1/' requirements/*.txt
