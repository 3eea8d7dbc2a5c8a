"""Print the Markdown table of every AMS_* variable (README's configuration section is made with it)."""
from __future__ import annotations

import dataclasses

from ams.config import env_name
from ams.docblocks import replace_block, write_block
from services.teacher.config import TeacherConfig
from services.trainer.config import TrainerConfig

SERVICES = [("teacher", TeacherConfig, "AMS_TEACHER_"), ("trainer", TrainerConfig, "AMS_")]


def rows() -> list[tuple[str, str, str, str]]:
    """(service, variable, default, help) for every config field."""
    out = []
    for service, cls, prefix in SERVICES:
        for f in dataclasses.fields(cls):
            out.append((service, f.metadata.get("env") or env_name(prefix, f.name), repr(f.default), f.metadata.get("help", "")))
    return out


def table() -> str:
    lines = ["| service | variable | default | meaning |", "|---|---|---|---|"]
    lines += [f"| {service} | `{var}` | `{default}` | {help_} |" for service, var, default, help_ in rows()]
    return "\n".join(lines)


def render_readme(text: str) -> str:
    """README text with the configuration table regenerated."""
    return replace_block(text, "config-table", table())


def main() -> None:
    import sys
    if "--readme" in sys.argv:
        write_block("config-table", table())
    else:
        print(table())


if __name__ == "__main__":
    main()
