"""The config's own words: each field's docstring, read from the dataclasses, for help and tooltips.

    from lab.config_docs import field_docs, commented_yaml, fields_help
    field_docs(TrainerConfig)["max_steps"]     # "Optimizer steps to run (each may accumulate ...)."
    print(commented_yaml(cfg))                 # `lab fit --print_config`: every value with its docstring
    print(fields_help(cfg))                    # `lab fit --help`: every dotted field, its default and doc

A field's docstring is the string literal right under it in the class body (PEP 257's
"attribute docstrings"). Python keeps no such attribute at run time, so they are read from
the source with ``ast``. One source, the dataclasses: the CLI's help, ``--print_config``'s
comments and the notebook panel's tooltips all come from here.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
from typing import Any

import yaml


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass (and its bases); fields without one are left out."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # defined where no source is kept (an interpreter prompt)
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            target = node.target if isinstance(node, ast.AnnAssign) else None
            if isinstance(target, ast.Name) and isinstance(after, ast.Expr) and \
                    isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[target.id] = " ".join(after.value.value.split())
    return docs


def section_docs(cfg: Any) -> dict[str, str]:
    """``{dotted field: docstring}`` for every field of a whole Config (sections included)."""
    out: dict[str, str] = {}

    def walk(obj: Any, prefix: str) -> None:
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name in docs:
                out[prefix + f.name] = docs[f.name]
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")

    walk(cfg, "")
    return out


def commented_yaml(cfg: Any) -> str:
    """The resolved config as YAML, each field preceded by its docstring as a comment."""
    docs = section_docs(cfg)
    lines: list[str] = []

    def emit(data: dict[str, Any], prefix: str, indent: str) -> None:
        for key, value in data.items():
            doc = docs.get(prefix + key)
            if doc:
                lines.extend(f"{indent}# {part}" for part in textwrap.wrap(doc, 96 - len(indent)))
            if isinstance(value, dict):
                lines.append(f"{indent}{key}:")
                emit(value, f"{prefix}{key}.", indent + "  ")
            else:
                dumped = yaml.safe_dump({key: value}, default_flow_style=True, sort_keys=False, width=1 << 16)
                lines.append(indent + dumped.strip().strip("{}"))

    emit(cfg.to_dict(), "", "")
    return "\n".join(lines) + "\n"


def fields_help(cfg: Any) -> str:
    """Every dotted field with its value in ``cfg`` and its docstring: the body of ``lab fit --help``'s epilog."""
    from lab.config import flatten

    flat = flatten(cfg.to_dict())
    docs = section_docs(cfg)
    return "\n".join(f"  --{key} ({flat[key]!r}): {docs.get(key, '')}".rstrip(": ") for key in flat)
