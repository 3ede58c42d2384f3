"""Base class for every method config: validated, frozen, unknown fields rejected."""

from __future__ import annotations

from typing import Any, ClassVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from modelzip.errors import ConfigError


class MethodConfig(BaseModel):
    """A method's validated options. Subclasses add fields; ``method`` names the recipe stage.

    Example:
        >>> class FinetuneConfig(MethodConfig):
        ...     method: ClassVar[str] = "finetune"
        ...     epochs: int = 3
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=False)
    method: ClassVar[str] = ""
    #: A stage that only decides how the file is written (``encode``): work other stages
    #: deferred (``Context.defer``) runs before it, not after it.
    packs_only: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        """The stage as it would be written in a recipe (round-trips through ``parse``)."""
        # Fields as the user set them (nested options keep what was written, not {}).
        return {"method": self.method, **self.model_dump(mode="json", exclude_unset=True)}

    def relaxed(self) -> tuple[MethodConfig, list[str]] | None:
        """A gentler version of this stage for an accuracy budget's back-off, and what changed
        (``["sparsity 0.8 -> 0.7", ...]``), or None when nothing can be relaxed.

        Lower sparsity (keep 1.5x the weights), more bits (+2, up to 8), a higher low-rank
        ratio or energy, and 1.5x the training epochs, on the fields the stage has; a method
        may override this. A change its config refuses (an option idle in its mode) is dropped.
        """
        fields = self.model_dump(exclude_unset=True)
        changes: list[str] = []
        for name, rule in _RELAX.items():
            if name not in type(self).model_fields:
                continue
            old = getattr(self, name)
            if name == "epochs" and name not in fields:
                continue  # an epochs field the stage does not use (e.g. a one-shot prune)
            new = {k: rule(v) for k, v in old.items()} if isinstance(old, dict) else rule(old)
            if isinstance(old, int | float | dict) and new != old:
                trial = {**fields, name: new}
                try:
                    type(self).model_validate(trial)
                except ValidationError:
                    continue
                fields = trial
                changes.append(f"{name} {old} -> {new}")
        if not changes:
            return None
        return type(self).model_validate(fields), changes

    @classmethod
    def parse(cls, fields: dict[str, Any], where: str = "") -> MethodConfig:
        """Validate ``fields`` into this config, turning pydantic errors into one line."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, cls, where)) from None


def _relax_number(fn: Any) -> Any:
    def rule(v: Any) -> Any:
        return fn(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    return rule


_RELAX: dict[str, Any] = {
    "sparsity": _relax_number(lambda s: round(max(0.0, 1 - (1 - s) * 1.5), 4) if s > 0 else s),
    "bits": _relax_number(lambda b: min(8, b + 2) if b < 8 else b),
    "ratio": _relax_number(lambda r: round(min(0.95, r * 1.5), 4) if r < 0.95 else r),
    "energy": _relax_number(lambda e: round(1 - (1 - e) / 2, 6) if e < 1 else e),
    "epochs": _relax_number(lambda e: min(1000, -(-e * 3 // 2)) if e > 0 else e),
}


def describe_validation_error(exc: ValidationError, cls: type[BaseModel], where: str = "") -> str:
    """One line naming the first bad field, its value and what is allowed."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(config)"
    prefix = f"{where}: " if where else ""
    name = getattr(cls, "method", "") or cls.__name__
    if err["type"] == "extra_forbidden":
        from modelzip.errors import did_you_mean

        owner = _owner_model(cls, err["loc"])  # a nested options object names its own fields
        valid = ", ".join(sorted(owner.model_fields))
        hint = did_you_mean(str(err["loc"][-1]), owner.model_fields)
        return f"{prefix}unknown field {loc!r} for {name}{hint}; valid fields: {valid}"
    value = err.get("input")
    return f"{prefix}{name}.{loc} = {value!r}: {err['msg']}"


def _owner_model(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The (possibly nested) model whose field list the last part of ``loc`` belongs to."""
    owner = cls
    for part in loc[:-1]:
        info = owner.model_fields.get(str(part))
        candidates = (info.annotation, *get_args(info.annotation)) if info else ()
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            break
        owner = nested[0]
    return owner
