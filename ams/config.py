"""Frozen config dataclasses read from AMS_* environment variables, overridable from the CLI."""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """A configuration value is missing or invalid."""


def _parse(kind: Any, raw: str, name: str) -> Any:
    try:
        if kind in (bool, "bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        return raw
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from exc


def env_name(prefix: str, field: str) -> str:
    return f"{prefix}{field.upper()}"


def load_config(cls: type[T], prefix: str, argv: list[str] | None = None, env: dict | None = None,
                description: str = "") -> T:
    """Build `cls` from defaults < AMS_* env vars < --flags; call its `validate()` if it has one."""
    source: Mapping[str, str] = os.environ if env is None else env
    values: dict[str, Any] = {}
    parser = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(cls):
        name = f.metadata.get("env") or env_name(prefix, f.name)
        if name in source:
            values[f.name] = _parse(f.type, source[name], name)
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            help=f"{f.metadata.get('help', '')} (env {name}, default {f.default!r})")
    if argv is not None:
        for key, raw in vars(parser.parse_args(argv)).items():
            if raw is not None:
                kind = next(f.type for f in dataclasses.fields(cls) if f.name == key)
                values[key] = _parse(kind, raw, "--" + key.replace("_", "-"))
    config = cls(**values)
    if hasattr(config, "validate"):
        config.validate()
    return config


def check_tls(insecure: bool, ca: str, cert: str, key: str, prefix: str) -> None:
    """A service serves TLS unless plain text is asked for explicitly; its files must exist."""
    if insecure:
        return
    for name, path in (("TLS_CA", ca), ("TLS_CERT", cert), ("TLS_KEY", key)):
        if not path:
            raise ConfigError(f"{prefix}{name} is not set: make certificates with `ams-admin init`, or set "
                              f"{prefix}INSECURE=true for a local plain-text demo")
        if not os.path.isfile(path):
            raise ConfigError(f"{prefix}{name}={path!r}: no such file")
