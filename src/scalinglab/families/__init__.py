"""Model families as plug-ins: one module per family, registered here.

A family module defines its config class, Flax model builder, objective (task), parameter
and FLOP counts and step-memory estimate, and a `FAMILY` record (`scalinglab.families.base.
Family`) that bundles them. The config schema (`scalinglab.config`), the model and task
builders, the counts (`scalinglab.flops`) and the host-memory estimate (`scalinglab.hostmem`)
all dispatch through `REGISTRY`. Adding a family: write its module, add one line below
(docs/architecture.md, "Adding a model family").
"""

from __future__ import annotations

import importlib
from typing import Any

from scalinglab.families.base import Family, FamilyConfig

# The registration: one module per family, each defining `FAMILY`. The first is the default
# family of a `model:` mapping without `family`, and this order is the order errors list.
_MODULES = (
    "scalinglab.families.gpt",
    "scalinglab.families.bert",
    "scalinglab.families.t5",
    "scalinglab.families.mlp",
    "scalinglab.families.resnet",
)


def _load(modules: tuple[str, ...]) -> dict[str, Family]:
    registry: dict[str, Family] = {}
    for name in modules:
        family: Family = importlib.import_module(name).FAMILY
        tag = family.config.model_fields["family"].default
        if tag != family.name or family.name in registry:
            raise RuntimeError(f"{name}: family {family.name!r} is registered twice or mistagged")
        registry[family.name] = family
    return registry


REGISTRY: dict[str, Family] = _load(_MODULES)
FAMILY_NAMES: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_FAMILY = FAMILY_NAMES[0]


def get_family(cfg_or_name: Any) -> Family:
    """The registered family of a model config (or of a family name); a ValueError naming
    model.family and listing the registered ones otherwise."""
    name = cfg_or_name if isinstance(cfg_or_name, str) else getattr(cfg_or_name, "family", None)
    family = REGISTRY.get(name)  # type: ignore[arg-type]
    if family is None:
        raise ValueError(
            f"model.family: unknown family {name!r}; allowed: {', '.join(FAMILY_NAMES)}"
        )
    return family


__all__ = ["DEFAULT_FAMILY", "FAMILY_NAMES", "REGISTRY", "Family", "FamilyConfig", "get_family"]
