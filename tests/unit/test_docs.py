"""README stays current with the code: every AMS_* variable is documented with its default."""
import os

from tools.config_table import render_readme

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_readme_config_table_is_current():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    assert text.startswith("# AMS") and "make demo" in text.split("\n## ")[0] and "make test" in text.split("\n## ")[0]
    assert render_readme(text) == text, "README's configuration table is stale: run python -m tools.config_table --readme"
