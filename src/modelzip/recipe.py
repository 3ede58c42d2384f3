"""Recipes: an ordered list of method stages, read from YAML or a built-in name.

Example:
    >>> r = Recipe.load("default")
    >>> [s.method for s in r.stages]
    ['prune', 'finetune', 'quantize']
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from modelzip.config import MethodConfig
from modelzip.errors import ModelzipError, RecipeError, choices_text, did_you_mean
from modelzip.registry import get_method

TOP_LEVEL_KEYS = ("name", "description", "max_drop", "stages")


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: typed stage configs in order.

    ``max_drop`` (points of accuracy on the val split, e.g. 0.5) opts into an accuracy budget:
    the pipeline checks after every stage and, when the finished recipe has lost more than
    the budget, runs it again relaxed (lower sparsity, more bits, more fine-tuning) until it is
    within budget or nothing is left to relax, and reports what it did (``pipeline.run``).
    """

    stages: tuple[MethodConfig, ...]
    name: str = ""
    description: str = ""
    max_drop: float | None = None

    @classmethod
    def from_dict(cls, obj: Any, *, where: str = "recipe") -> Recipe:
        """Validate a parsed recipe (``{"stages": [{"method": ..., ...}, ...]}``)."""
        if isinstance(obj, list):
            obj = {"stages": obj}
        if not isinstance(obj, dict):
            raise RecipeError(
                f"{where}: expected a mapping with 'stages', got {type(obj).__name__}"
            )
        unknown = set(obj) - set(TOP_LEVEL_KEYS)
        if unknown:
            key = sorted(unknown)[0]
            raise RecipeError(
                f"{where}: unknown key {key!r}{did_you_mean(key, TOP_LEVEL_KEYS)}; "
                f"valid keys: {', '.join(TOP_LEVEL_KEYS)}"
            )
        stages = obj.get("stages")
        if not isinstance(stages, list) or not stages:
            raise RecipeError(f"{where}: 'stages' must be a non-empty list of method stages")
        parsed = []
        for i, stage in enumerate(stages, 1):
            here = f"{where} stage {i}"
            if not isinstance(stage, dict) or "method" not in stage:
                raise RecipeError(f"{here}: each stage needs a 'method' key, got {stage!r}")
            fields = dict(stage)
            name = fields.pop("method")
            try:
                method = get_method(str(name))
            except RecipeError as exc:
                raise RecipeError(f"{here}: {exc}") from None
            parsed.append(method.config.parse(fields, where=here))
        max_drop = obj.get("max_drop")
        if max_drop is not None and (
            isinstance(max_drop, bool)
            or not isinstance(max_drop, int | float)
            or not 0 <= max_drop <= 100
        ):
            raise RecipeError(
                f"{where}: max_drop = {max_drop!r}: give the accuracy budget in points, "
                "a number in [0, 100] (e.g. 0.5)"
            )
        return cls(
            tuple(parsed),
            str(obj.get("name", "")),
            str(obj.get("description", "")),
            float(max_drop) if max_drop is not None else None,
        )

    @classmethod
    def from_yaml(cls, text: str, *, where: str = "recipe") -> Recipe:
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            at = f" at line {line + 1}" if line is not None else ""
            raise RecipeError(
                f"{where}: invalid YAML{at}: {getattr(exc, 'problem', exc)}"
            ) from None
        return cls.from_dict(obj, where=where)

    @classmethod
    def load(cls, spec: str | Path | Recipe) -> Recipe:
        """A built-in recipe name or a path to a YAML file."""
        if isinstance(spec, Recipe):
            return spec
        text = str(spec)
        if text in builtin_recipes():
            return cls.from_yaml(_builtin_text(text), where=f"recipe {text!r}")
        path = Path(text)
        if path.suffix.lower() in (".yaml", ".yml") or path.exists():
            if not path.is_file():
                raise RecipeError(f"recipe file not found: {path}")
            return cls.from_yaml(path.read_text(encoding="utf-8"), where=str(path))
        names = builtin_recipes()
        raise RecipeError(
            f"unknown recipe {text!r}{did_you_mean(text, names)}; built-in recipes: "
            f"{choices_text(names)}, or a path to a .yaml file"
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        if self.max_drop is not None:
            out["max_drop"] = self.max_drop
        out["stages"] = [s.to_dict() for s in self.stages]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _builtin_text(name: str) -> str:
    return (resources.files("modelzip") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8")


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with modelzip."""
    folder = resources.files("modelzip") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def describe_builtin() -> dict[str, str]:
    """Name -> one-line description of each built-in recipe."""
    out = {}
    for name in builtin_recipes():
        try:
            out[name] = Recipe.load(name).description
        except ModelzipError as exc:  # a recipe for a method this install lacks
            out[name] = f"(unavailable: {exc})"
    return out
