"""Pass configurations: small versioned dataclasses that validate themselves, and recipes.

A recipe is an ordered list of pass configs. It is written as YAML/JSON::

    passes:
      - {pass: precision, dtype: bf16}
      - {pass: compile, backend: inductor, freeze: true}

or named by a preset (``autolite.presets``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import yaml

from autolite.errors import RecipeError
from autolite.fields import check_field_types, syntax_error

_CONFIG_CLASSES: dict[str, type["PassConfig"]] = {}


@dataclasses.dataclass
class PassConfig:
    """Base class of every pass configuration.

    Subclasses set ``name`` (the key in recipe files) and ``version``, and validate their fields in
    ``__post_init__`` by raising :class:`RecipeError`.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _CONFIG_CLASSES[cls.name] = cls
        own = cls.__dict__.get("__post_init__")
        if own is not None:  # field types (from the annotations) are checked before the config's own checks
            def post_init(self: "PassConfig", _own: Any = own) -> None:
                check_field_types(self)
                _own(self)
            cls.__post_init__ = post_init

    def __post_init__(self) -> None:
        check_field_types(self)

    def to_dict(self) -> dict[str, Any]:
        """Serialise as ``{"pass": name, "version": v, **fields}``."""
        data = {"pass": self.name, "version": self.version}
        data.update(dataclasses.asdict(self))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PassConfig":
        """Build the config named by ``data["pass"]``; unknown keys are rejected (an allow-list)."""
        if not isinstance(data, dict) or "pass" not in data:
            raise RecipeError(f"each recipe entry needs a 'pass' key, got {data!r}")
        kind = data["pass"]
        config_cls = _CONFIG_CLASSES.get(kind)
        if config_cls is None:
            raise RecipeError(f"unknown pass '{kind}'; known passes: {', '.join(sorted(_CONFIG_CLASSES))}")
        fields = {f.name for f in dataclasses.fields(config_cls)}
        args = {k: v for k, v in data.items() if k not in ("pass", "version")}
        unknown = sorted(set(args) - fields)
        if unknown:
            raise RecipeError(f"pass '{kind}' has no option(s) {unknown}; allowed: {sorted(fields)}")
        if int(data.get("version", config_cls.version)) > config_cls.version:
            raise RecipeError(f"pass '{kind}' version {data['version']} is newer than this autolite "
                              f"supports ({config_cls.version}); upgrade autolite")
        return config_cls(**args)


def known_passes() -> list[str]:
    """Names of every registered pass config."""
    return sorted(_CONFIG_CLASSES)


@dataclasses.dataclass
class Recipe:
    """An ordered list of pass configs, with the name it was loaded from."""

    passes: list[PassConfig]
    name: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passes": [p.to_dict() for p in self.passes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str | None = None) -> "Recipe":
        if isinstance(data, list):
            data = {"passes": data}
        if not isinstance(data, dict) or not isinstance(data.get("passes"), list):
            raise RecipeError("a recipe must be a mapping with a 'passes' list (or a plain list of passes)")
        unknown = sorted(set(data) - {"name", "passes"})
        if unknown:
            raise RecipeError(f"a recipe has no top-level key(s) {unknown}; allowed: ['name', 'passes']")
        passes = [PassConfig.from_dict(entry) for entry in data["passes"]]
        return cls(passes=passes, name=name or data.get("name", "custom"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def __str__(self) -> str:
        return self.name


def load_recipe(spec: "str | Path | Recipe | list[PassConfig] | None") -> Recipe:
    """Resolve a recipe: a Recipe, a list of configs, a YAML/JSON file, or a preset name."""
    from autolite import presets
    from autolite.passes import import_builtin_passes

    import_builtin_passes()
    if spec is None:
        spec = "default"
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, (list, tuple)):  # configs or {"pass": ...} dicts
        return Recipe(passes=[p if isinstance(p, PassConfig) else PassConfig.from_dict(p) for p in spec])
    text = str(spec)
    path = Path(text)
    if text.endswith((".yaml", ".yml", ".json")) or path.is_file():
        return _recipe_from_file(path)
    return presets.get_preset(text)


def _recipe_from_file(path: Path) -> Recipe:
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist; pass a YAML/JSON file or a preset name")
    try:
        raw = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (ValueError, yaml.YAMLError) as exc:
        raise RecipeError(f"recipe file {path} is not valid YAML/JSON: {syntax_error(exc)}") from exc
    return Recipe.from_dict(raw, name=path.stem)
