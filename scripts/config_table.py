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


def main() -> None:
    print("| service | variable | default | meaning |")
    print("|---|---|---|---|")
    for service, var, default, help_ in rows():
        print(f"| {service} | `{var}` | `{default}` | {help_} |")


if __name__ == "__main__":
    main()
