"""Pass configurations: small versioned dataclasses that validate themselves, and recipes.

A recipe is an ordered list of pass configs. It is written as YAML/JSON::

    passes:
      - {pass: precision, dtype: bf16}
      - {pass: compile, backend: inductor, freeze: true}

or named by a preset (``autolite.presets``); ``autolite.passes.load_recipe`` resolves either.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import yaml

from autolite.errors import RecipeError
from autolite.fields import check_field_types

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
