"""The committed ams/v1 stubs must be exactly what `make proto` generates from proto/."""
import filecmp
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_committed_stubs_match_proto_files(tmp_path):
    protos = sorted(glob.glob(os.path.join(ROOT, "proto/ams/v1/*.proto")))
    assert protos
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}/proto", f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", *protos], check=True)
    generated = sorted(os.listdir(tmp_path / "ams" / "v1"))
    assert generated
    for name in generated:
        committed = os.path.join(ROOT, "ams", "v1", name)
        assert os.path.exists(committed), f"{name} is not committed: run make proto"
        assert filecmp.cmp(tmp_path / "ams" / "v1" / name, committed, shallow=False), f"{name} is stale: run make proto"
