"""The house's shape (issue 25): what the wheel installs, who may import whom, how big a module gets."""
import ast
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ams", "services", "edge_client")
MAX_LINES = 350


def _modules(*roots: str):
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            if "/v1/" not in path.as_posix():        # generated stubs
                yield path


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_wheel_installs_only_the_three_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    wheel, = tmp_path.glob("*.whl")
    assert wheel.name.startswith("adaptive_model_streaming-")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name}
    assert tops == set(PACKAGES)


def test_product_code_and_fixtures_import_no_benchmark_no_tool_and_the_trainer_no_edge_client():
    for path in [*_modules(*PACKAGES), REPO / "tests" / "conftest.py"]:
        bad = {n for n in _imports(path) if n.split(".")[0] in ("benchmarks", "tools", "scripts")}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"
    for path in _modules("services/trainer"):
        assert not {n for n in _imports(path) if n.startswith("edge_client")}, path


def test_only_the_servicer_and_serde_speak_protobuf_in_the_trainer():
    speaking = {p.name for p in _modules("services/trainer") if any("streaming_pb2" in n for n in _imports(p))}
    assert speaking <= {"serde.py", "service.py"}, speaking


def test_no_module_of_the_packages_is_over_350_lines():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in _modules(*PACKAGES)}
    assert not {p: n for p, n in sizes.items() if n > MAX_LINES}
    assert not (REPO / "services/trainer/manager.py").exists()
