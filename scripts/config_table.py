"""Print the Markdown table of every AMS_* variable (README's configuration section is made with it)."""
from __future__ import annotations

import dataclasses

from ams.config import env_name
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


BEGIN, END = "<!-- config-table:begin -->", "<!-- config-table:end -->"


def table() -> str:
    lines = ["| service | variable | default | meaning |", "|---|---|---|---|"]
    lines += [f"| {service} | `{var}` | `{default}` | {help_} |" for service, var, default, help_ in rows()]
    return "\n".join(lines)


def render_readme(text: str) -> str:
    """README text with the table between the markers regenerated."""
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> None:
    import sys
    if "--readme" in sys.argv:
        with open("README.md") as f:
            text = f.read()
        with open("README.md", "w") as f:
            f.write(render_readme(text))
    else:
        print(table())


if __name__ == "__main__":
    main()
