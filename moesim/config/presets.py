"""Built-in presets: models and GPUs (YAML inside the package), topologies and scenarios.

Models live in ``moesim/presets/models/<name>.yaml``, GPUs in ``moesim/presets/gpus/<name>.yaml``.
Topologies and scenarios live in the repository's top-level ``topologies/`` and ``scenarios/``
folders, which the wheel ships as ``moesim/_data/...``; both locations are searched.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from moesim.config.schema import GpuSpec, ModelSpec
from moesim.core.errors import ConfigError

M = TypeVar("M", ModelSpec, GpuSpec)

__all__ = ["data_dirs", "list_presets", "load_gpu", "load_model", "preset_path", "read_yaml"]

_PKG = Path(__file__).resolve().parent.parent
_PRESETS = _PKG / "presets"


def data_dirs(kind: str) -> list[Path]:
    """Folders holding ``kind`` (``models``, ``gpus``, ``topologies``, ``scenarios``) presets."""
    if kind in ("models", "gpus"):
        return [_PRESETS / kind]
    return [p for p in (_PKG / "_data" / kind, _PKG.parent / kind) if p.is_dir()]


def list_presets(kind: str) -> list[str]:
    """Sorted preset names of one kind."""
    names = {p.stem for d in data_dirs(kind) for p in d.glob("*.yaml")}
    return sorted(names)


_SINGULAR = {"models": "model", "gpus": "GPU", "topologies": "topology", "scenarios": "scenario"}


def preset_path(kind: str, name: str, *, field: str) -> Path:
    """Path of preset ``name`` of ``kind``; a ConfigError naming ``field`` if unknown."""
    for d in data_dirs(kind):
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    known = list_presets(kind)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    what = _SINGULAR.get(kind, kind)
    raise ConfigError(f"unknown {what} preset {name!r}; {hint}known: {', '.join(known)} (see `moesim presets`)",
                      field=field)


def read_yaml(path: Path, *, field: str) -> dict[str, Any]:
    """Parse a YAML mapping, turning syntax errors into a ConfigError naming the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(e)}", field=field) from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", field=field) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level", field=field)
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: ``line L, column C: problem``."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


def _load_preset(kind: str, name: str, model: type[M], field: str) -> M:
    path = preset_path(kind, name, field=field)
    try:
        return model.model_validate(read_yaml(path, field=field))
    except ValidationError as e:
        raise ConfigError(f"preset file {path} is invalid: {e}", field=field) from None


@lru_cache(maxsize=None)
def load_model(name: str) -> ModelSpec:
    """The model preset ``name`` as a validated ModelSpec."""
    return _load_preset("models", name, ModelSpec, "model")


@lru_cache(maxsize=None)
def load_gpu(name: str) -> GpuSpec:
    """The GPU preset ``name`` as a validated GpuSpec."""
    return _load_preset("gpus", name, GpuSpec, "hardware.gpu")
