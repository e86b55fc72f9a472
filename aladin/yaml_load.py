"""The YAML reader of params.yaml: PyYAML's safe loader, with YAML 1.2 floats.

PyYAML implements YAML 1.1, where a float needs a dot and a signed exponent, so a hand-written
``lr: 1e-3`` is read as the string '1e-3'; DVC (ruamel, YAML 1.2) reads the same file as a
number. This loader resolves 1e-3, 1E5, -2.5e-4 and 1.0e5 as floats, like DVC and YAML 1.2.
"""
from __future__ import annotations

import re
from typing import Any

import yaml


class ParamsLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads exponent-only and unsigned-exponent floats as numbers."""


# Resolvers are tried in order for a scalar's first character; this one is added after the
# YAML 1.1 float and int resolvers, so it only decides scalars they leave as strings.
ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+|[0-9][0-9_]*)[eE][-+]?[0-9]+$"""),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text as params.yaml is parsed (safe types only)."""
    return yaml.load(text, Loader=ParamsLoader)
