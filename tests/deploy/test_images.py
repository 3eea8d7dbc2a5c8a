"""The images build from a clean clone (checked without a container engine): hadolint passes on every
Dockerfile, every COPY source is tracked by git (or made by an earlier stage) and not excluded from
the build context, compose builds stages that exist, the teacher carries no torch, and the lock
files pin what pyproject.toml asks for."""
from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(p for p in (REPO / "deploy").rglob("Dockerfile*") if not p.name.endswith(".dockerignore"))
HADOLINT = Path(sys.executable).parent / "hadolint"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(s for s in path.read_text().splitlines() if not s.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages(path: Path) -> list[str]:
    return [m.group(1) for op, args in _instructions(path) if op == "FROM"
            and (m := re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE))]


def _ignored(path: Path) -> list[str]:
    ignore = path.with_name(path.name + ".dockerignore")
    ignore = ignore if ignore.exists() else REPO / ".dockerignore"
    return [s.strip().rstrip("/") for s in ignore.read_text().splitlines() if s.strip() and not s.startswith("#")]


def test_there_are_dockerfiles():
    assert DOCKERFILES, "no Dockerfile under deploy/"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_hadolint_passes(dockerfile):
    result = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_copy_source_is_tracked_or_built_by_an_earlier_stage(dockerfile):
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    ignored = _ignored(dockerfile)
    seen_stages: list[str] = []
    for op, args in _instructions(dockerfile):
        if op == "FROM" and (m := re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)):
            seen_stages.append(m.group(1))
        if op not in ("COPY", "ADD"):
            continue
        words = args.split()
        flags = [w for w in words if w.startswith("--")]
        sources = [w for w in words if not w.startswith("--")][:-1]
        source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if source_stage is not None:
            assert source_stage in seen_stages[:-1], f"COPY --from={source_stage}: no earlier stage of that name"
            continue
        assert op == "COPY", f"ADD {args}: use COPY (or a stage that fetches)"
        for source in sources:
            src = source.rstrip("/")
            assert any(f == src or f.startswith(src + "/") for f in tracked), f"COPY {source}: not tracked by git"
            assert not any(fnmatch.fnmatch(src, pattern) or src.startswith(pattern + "/") for pattern in ignored), \
                f"COPY {source}: excluded from the build context by .dockerignore"


def test_compose_builds_stages_that_exist():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    builds = [s["build"] for s in compose["services"].values() if "build" in s]
    assert builds
    for build in builds:
        dockerfile = REPO / build["dockerfile"]
        assert build.get("target") in _stages(dockerfile), f"{build}: no such stage in {dockerfile}"
    images = {name: s["image"] for name, s in compose["services"].items() if "build" in s}
    assert images["teacher"].startswith("ams-teacher:") and images["trainer"].startswith("ams-trainer:")


def test_the_teacher_image_carries_no_torch():
    lock = (REPO / "requirements" / "teacher.txt").read_text()
    assert not re.search(r"^torch==", lock, re.MULTILINE)
    probe = "import sys, services.teacher.__main__, services.teacher.service; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True)


@pytest.mark.parametrize("extra", ["teacher", "trainer"])
def test_lock_files_pin_what_pyproject_asks_for(extra):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"][extra]
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", (REPO / "requirements" / f"{extra}.txt").read_text(),
                           re.MULTILINE))
    pins = {name.lower().replace("_", "-"): version for name, version in pins.items()}
    for requirement in map(Requirement, wanted):
        pinned = pins.get(requirement.name.lower().replace("_", "-"))
        assert pinned is not None and pinned in requirement.specifier, f"requirements/{extra}.txt: {requirement} (make lock)"


def test_runtime_dependencies_are_ranges_and_tools_exact_pins():
    """A host application that embeds the edge client keeps its own versions: the runtime asks for ranges."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for requirement in map(Requirement, project["dependencies"] + extras["trainer"] + extras["teacher"] + extras["onnx"]):
        assert {s.operator for s in requirement.specifier} == {">=", "<"}, str(requirement)
    assert all("==" in r for r in extras["tools"] + extras["dev"])


def test_the_teacher_lock_carries_a_hash_for_every_pin():
    """The teacher image installs with --require-hashes: a pin without its files' SHA-256 would fail the build."""
    text = (REPO / "requirements" / "teacher.txt").read_text()
    pins = re.findall(r"^[A-Za-z0-9_.-]+==[^\s\\]+ \\\n((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, re.MULTILINE)
    assert len(pins) == len(re.findall(r"^[A-Za-z0-9_.-]+==", text, re.MULTILINE)) > 10
    assert "--require-hashes -r requirements/teacher.txt" in (REPO / "deploy" / "python" / "Dockerfile").read_text()
