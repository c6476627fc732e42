"""What every part of the configuration shares: one strict pydantic base, errors that name the field
and the accepted values, and the checks of names against a registry.

The configuration is the bottom layer of the package: it imports nothing of ssl_hpc and nothing
heavy (no torch, MLflow or Ray), so a bad sweep is refused in a fraction of a second, before anything
is submitted or logged.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A sweep (or profile) that cannot run; the message names the field and the accepted values."""


class Strict(BaseModel):
    """Unknown fields are refused (a typo never silently falls back to a default); instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_control_characters(value: str) -> str:
    """Paths and names end up in job scripts and on command lines, where a newline starts a new command."""
    bad = sorted({repr(c) for c in value if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ValueError(
            f"{value!r} contains control characters ({', '.join(bad)}); accepted: printable characters only"
        )
    return value


# A string that may reach a shell or a job script: printable characters only.
Text = Annotated[str, AfterValidator(_no_control_characters)]


class FieldError(ValueError):
    """Raised inside a validator to report a field other than the one being validated."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_names(values: list[str], registry: typing.Mapping[str, Any] | typing.Collection[str], what: str) -> list[str]:
    for value in values:
        if value not in registry:
            raise ValueError(f"unknown {what} {value!r}; accepted: {', '.join(sorted(registry))}")
    return values


def validate_partial(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """Checks a partial section now, so a typo in an override fails before anything runs."""
    try:
        model(**values)
    except ValidationError as error:
        raise ValueError("; ".join(f"{field}: {message}" for field, message in describe(error, model))) from None
    return values


def validate_model(model: type[BaseModel], raw: dict[str, Any], source: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, model, source)) from None


def format_validation_error(error: ValidationError, model: type[BaseModel], source: str) -> str:
    return "\n".join(f"{source}: {field or '(top level)'}: {message}" for field, message in describe(error, model))


def describe(error: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    """(dotted field, message naming what is accepted) for each error."""
    described = []
    for item in error.errors():
        field = _dotted(item["loc"])
        message = item["msg"]
        inner = (item.get("ctx") or {}).get("error")
        if isinstance(inner, FieldError):
            field, message = inner.field, str(inner)
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if item["type"] == "extra_forbidden":
            accepted = _accepted_fields(model, item["loc"][:-1])
            message = f"unknown field; accepted: {', '.join(accepted)}" if accepted else "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        described.append((field, message))
    return described


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).startswith(("function-", "literal[")):
            continue
        else:
            text += ("." if text else "") + str(part)
    return text


def _accepted_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """Walks ``loc`` through nested models to list the fields the innermost one accepts."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif typing.get_origin(annotation) in (list, tuple):
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, __import__("types").UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation
