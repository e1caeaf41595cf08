"""Located config errors: a pydantic ValidationError of a trial config as one line per problem,
`file:line: field: message`, naming the allowed fields or values (or the `--set` flag that gave
the field). Split from `scalinglab.config`, which re-exports `format_validation_error`.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ValidationError

from scalinglab.families import REGISTRY


def format_validation_error(
    err: ValidationError,
    source: str,
    lines: dict[tuple[str, ...], int] | None = None,
    flags: dict[tuple[str, ...], str] | None = None,
) -> str:
    """One line per problem: `source:line: field: message`; a field that a `--set` flag gave
    (``flags``: dotted key -> the flag) is blamed on the flag, not on the file."""
    out = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        family = None
        if len(loc) >= 2 and loc[0] == "model" and loc[1] in REGISTRY:
            # The discriminated union puts the family tag in loc: model.gpt.size -> model.size.
            family, loc = loc[1], (loc[0], *loc[2:])
        msg = e["msg"]
        named = None
        if e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            named = _field_named(msg, loc)
            loc = named or loc
        field = ".".join(loc) or "<root>"
        line = None
        if lines:
            for k in range(len(loc), 0, -1):
                if loc[:k] in lines:
                    line = lines[loc[:k]]
                    break
        where = f"{source}:{line}" if line else source
        given = flags or {}
        flag = next((given[loc[:k]] for k in range(len(loc), 0, -1) if loc[:k] in given), None)
        if flag is not None:
            where = flag
        if named:  # a check across fields whose message starts with the field it blames
            out.append(f"{where}: {msg}")
            continue
        if e["type"] == "extra_forbidden":
            parent = REGISTRY[family].config if family and len(loc) == 2 else _model_at(loc[:-1])
            what = f"not a field of model.family {family!r}" if family else "unknown field"
            msg = f"{what}; allowed: {', '.join(parent.model_fields)}" if parent else what
        elif e["type"] == "literal_error":
            msg = "not allowed; " + msg.replace("Input should be", "expected")
        elif e["type"] == "missing" and family:
            msg = f"required by model.family {family!r}"
        out.append(f"{where}: {field}: {msg} (got {e.get('input')!r})")
    return "\n".join(out)


def _field_named(msg: str, loc: tuple[str, ...]) -> tuple[str, ...] | None:
    """The dotted field a check's message starts with (`model.family 'gpt' cannot train ...`),
    when it lies at or below `loc`: such checks (TrialConfig's, DataConfig's) fail at their
    model's root, and their input is the whole mapping, so the error is located at that field
    instead and the message, which states the values, stands alone."""
    match = re.match(r"((?:seed|model|data|optimizer|train)(?:\.\w+)*)\b", msg)
    if match is None:
        return None
    path = tuple(match.group(1).split("."))
    return path if path[: len(loc)] == loc and len(path) > len(loc) else None


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    from scalinglab.config import TrialConfig  # config imports this module

    model: type[BaseModel] = TrialConfig
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        candidates = getattr(ann, "__args__", (ann,))
        sub = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if sub is None:
            return None
        model = sub
    return model
