"""YAML → Scenario: read, apply ``--set a.b=c`` overrides, validate, explain errors."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from moesim.config.presets import list_presets, preset_path, read_yaml
from moesim.config.schema import Scenario
from moesim.core.errors import ConfigError

__all__ = ["apply_overrides", "dump_yaml", "load_scenario", "scenario_hash", "DEFAULT_SCENARIO"]

DEFAULT_SCENARIO = "default"


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``tree`` with each ``"a.b.c=value"`` applied (value parsed as YAML)."""
    out = copy.deepcopy(tree)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.path=value, e.g. deployment.replicas=4",
                              field="--set")
        node = out
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if isinstance(nxt, str) and i == 0 and part in ("model",):
                raise ConfigError(f"cannot set {key}: {part} is the preset name {nxt!r}; inline the spec instead",
                                  field=key)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


_UNION_TAGS = ("poisson", "gamma", "azure_trace", "str")


def _is_union_tag(part: object) -> bool:
    """A loc element naming a union member (``str``, ``GpuSpec``, ``function-after[..., ModelSpec]``)."""
    return isinstance(part, str) and (part in _UNION_TAGS or part[:1].isupper() or "[" in part)


def _explain(err: ValidationError, model: type[BaseModel]) -> ConfigError:
    """Turn pydantic's first error into one line naming the dotted field and a fix."""
    errors = err.errors()
    # ``str | Spec`` given a mapping: the inline spec's own error says more than "not a string"
    first = next((e for e in errors if not (e["type"] == "string_type" and isinstance(e.get("input"), dict))),
                 errors[0])
    loc = [str(p) for p in first["loc"] if not _is_union_tag(p)]
    field = ".".join(loc) or "scenario"
    if first["type"] == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}"
        return ConfigError(f"unknown key {loc[-1]!r}; {hint}", field=field)
    if first["type"] == "missing":
        return ConfigError(f"required key {loc[-1] if loc else 'scenario'!r} is missing; add it", field=field)
    if first["type"] == "union_tag_invalid":
        ctx = first.get("ctx") or {}
        return ConfigError(f"unknown kind {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}",
                           field=f"{field}.kind")
    msg = first["msg"].removeprefix("Value error, ")
    return ConfigError(f"{msg} (got {first.get('input')!r})" if first["type"] != "value_error" else msg, field=field)


def _known_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    cur: Any = model
    for part in path:
        fields = getattr(cur, "model_fields", {})
        if part not in fields:
            return []
        ann = fields[part].annotation
        cur = next((a for a in getattr(ann, "__args__", (ann,)) if hasattr(a, "model_fields")), ann)
    return list(getattr(cur, "model_fields", {}))


def _resolve_paths(tree: dict[str, Any], base: Path) -> None:
    """Make relative file paths (trace files, transition matrices) absolute against the scenario's
    folder when the file is there, else against the cwd."""
    for section, key in (("workload", "path"), ("routing", "trace_path"), ("routing", "layer_correlation")):
        node = tree.get(section)
        if not (isinstance(node, dict) and isinstance(node.get(key), str)):
            continue
        p = Path(node[key]).expanduser()
        if not p.is_absolute():
            for cand in (base / p, Path.cwd() / p):
                if cand.exists():
                    node[key] = str(cand.resolve())
                    break


def load_scenario(source: str | Path | None = None, overrides: list[str] | None = None) -> Scenario:
    """Load a scenario from a YAML path or a scenario preset name (None → the built-in default)."""
    name = DEFAULT_SCENARIO if source is None else str(source)
    path = Path(name)
    if not path.suffix and not path.exists():
        if name not in list_presets("scenarios"):
            preset_path("scenarios", name, field="scenario")  # raises with the known names
        path = preset_path("scenarios", name, field="scenario")
    elif not path.is_file():
        raise ConfigError(f"no scenario file at {path}; give a YAML path or a preset from `moesim presets`",
                          field="scenario")
    tree = read_yaml(path, field="scenario")
    tree = apply_overrides(tree, overrides or [])
    _resolve_paths(tree, path.resolve().parent)
    try:
        return Scenario.model_validate(tree)
    except ValidationError as e:
        raise _explain(e, Scenario) from None


def scenario_hash(scenario: Scenario) -> str:
    """sha256 (first 16 hex digits) of the scenario's canonical JSON."""
    blob = json.dumps(scenario.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_yaml(scenario: Scenario) -> str:
    """The scenario as YAML (what ``moesim config`` prints)."""
    return yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False)
