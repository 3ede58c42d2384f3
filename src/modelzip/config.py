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

    def to_dict(self) -> dict[str, Any]:
        """The stage as it would be written in a recipe (round-trips through ``parse``)."""
        # Fields as the user set them (nested options keep what was written, not {}).
        return {"method": self.method, **self.model_dump(mode="json", exclude_unset=True)}

    @classmethod
    def parse(cls, fields: dict[str, Any], where: str = "") -> MethodConfig:
        """Validate ``fields`` into this config, turning pydantic errors into one line."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, cls, where)) from None


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
