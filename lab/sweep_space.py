"""A sweep's search space: dotted config fields and the values to try, checked before any trial.

    from lab.config import load_config
    from lab.sweep_space import load_space
    base = load_config("gpt-nano", {"trainer.max_steps": 300})
    space = load_space("space.yaml", base)        # or a mapping, as below; ConfigError/LabError if refused
    space.names                                   # ("optimizer.lr", "optimizer.schedule", ...)
    overrides = space.suggest(trial)              # an Optuna trial -> {"optimizer.lr": 0.0021, ...}

A space file maps any dotted config field to a range or a list of choices::

    optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}     # a float field: suggest_float
    optimizer.warmup_steps: {low: 0, high: 200, step: 50}     # a whole-number field: suggest_int
    model.dropout: {low: 0.0, high: 0.2}
    optimizer.schedule: [cosine, constant]                    # choices, of any field (lists too: [[16], [32]])

Whether a range is of floats or whole numbers is the field's own type (its dataclass), not the
way the numbers are written. Every value the space can produce at its ends -- each bound, each
choice -- is put into the base config and validated by the config's own dataclasses, so a field
that does not exist, a wrong type or a value the field refuses is one ``ConfigError`` line before
any trial starts. ``model.name``, ``data.name`` and ``experiment`` cannot be swept: a sweep
searches one model family on one data set, and its trials form one experiment.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from lab.config import Config, from_dict, validate, yaml_problem
from lab.errors import ConfigError, LabError

FIXED = ("model.name", "data.name", "experiment")
"""Fields a sweep cannot vary: they pick the family, the data and the experiment folder."""
RANGE_KEYS = ("low", "high", "log", "step")
RANGE_FORM = "a range {low: .., high: .. [, log: true | step: ..]} or a list of choices"
COMBINATIONS = 64
"""How many assignments of the other swept fields a value may be tried with before it is refused
(a value can be valid only beside another field's value: n_embd 96 needs n_head 3, not 4)."""


@dataclass(frozen=True)
class Param:
    """One swept field and the values Optuna may suggest for it."""

    name: str
    """The dotted config field, e.g. ``optimizer.lr``."""
    kind: str
    """``float`` or ``int`` (a range; the field's type decides) or ``categorical`` (a list of choices)."""
    low: float | int | None = None
    """A range's lowest value (included)."""
    high: float | int | None = None
    """A range's highest value (included)."""
    log: bool = False
    """Sample a range uniformly in log space (learning rates, weight decay)."""
    step: float | int | None = None
    """A range's spacing (whole-number fields: 1 when not given)."""
    choices: tuple[Any, ...] = ()
    """A list's values, as Optuna stores them: numbers, strings, booleans or null; a list-valued
    field's choices are kept as YAML text ("[16, 32]"), which the config reads back as a list."""

    def suggest(self, trial: Any) -> Any:
        """This field's value for an Optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log, step=self.step)

    def ends(self) -> tuple[Any, ...]:
        """The values checked before a sweep: a range's bounds, or every choice."""
        return self.choices if self.kind == "categorical" else (self.low, self.high)

    def spec(self) -> Any:
        """The space file's form of this field (what the study records)."""
        if self.kind == "categorical":
            return list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class Space:
    """The swept fields, in the space file's order."""

    params: tuple[Param, ...] = field(default_factory=tuple)
    """One entry per swept field."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Dotted overrides for one trial: ``{"optimizer.lr": 0.0021, ...}``."""
        return {p.name: p.suggest(trial) for p in self.params}

    def spec(self) -> dict[str, Any]:
        """The space as a space file would write it (``parse_space(space.spec(), base)`` gives it back)."""
        return {p.name: p.spec() for p in self.params}

    def log_scaled(self, name: str) -> bool:
        """Whether ``name`` is a log range (charts draw its axis in log scale)."""
        return any(p.name == name and p.log for p in self.params)


def read_space(path: str | Path) -> dict[str, Any]:
    """The mapping in a space file (YAML, read with ``safe_load``); LabError naming the file otherwise."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"space file {path} does not exist: give a YAML file of dotted fields and ranges, e.g. "
                       "optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}") from None
    except IsADirectoryError:
        raise LabError(f"space file {path} is a folder: give a YAML file in it") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise LabError(f"space file {path} is not valid YAML ({yaml_problem(e)}): fix it") from None
    except OSError as e:
        raise LabError(f"cannot read space file {path}: {e.strerror or e}; check the path and its "
                       "permissions") from None
    if raw is None:
        raise LabError(f"space file {path} is empty: write at least one field to search, e.g. "
                       "optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}")
    if not isinstance(raw, dict):
        raise LabError(f"space file {path} holds a {type(raw).__name__}, not a mapping: write dotted fields with "
                       "ranges or lists, e.g. optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}")
    return raw


def load_space(source: str | Path | Mapping[str, Any], base: Config) -> Space:
    """A space file (or a mapping in its form), parsed and checked against ``base``."""
    raw = dict(source) if isinstance(source, Mapping) else read_space(source)
    return parse_space(raw, base)


def parse_space(raw: Mapping[str, Any], base: Config) -> Space:
    """Check every field and value of ``raw`` against ``base``'s dataclasses; the Space, or ConfigError."""
    if not raw:
        raise LabError("the search space is empty: name at least one dotted field with a range or a list of choices")
    base_dict = base.to_dict()
    params = tuple(_param(str(name), spec, base_dict) for name, spec in raw.items())
    _check_together(params, base_dict)
    return Space(params)


def _param(name: str, spec: Any, base: dict[str, Any]) -> Param:
    """One field of the space file, with its bounds or choices as the config reads them."""
    _check_name(name, spec, base)
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(name, spec, "a non-empty list of choices")
        choices = tuple(_choice(name, _probe(base, name, value, check=False)) for value in spec)
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(name, spec, "a list of different choices", "remove the repeated value")
        return Param(name, "categorical", choices=choices)
    if not isinstance(spec, dict):
        raise ConfigError(name, spec, RANGE_FORM)
    unknown = [k for k in spec if k not in RANGE_KEYS]
    missing = [k for k in ("low", "high") if k not in spec]
    if unknown or missing:
        raise ConfigError(name, spec, RANGE_FORM, f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]}")
    low, high = (_probe(base, name, spec[k], check=False) for k in ("low", "high"))
    kind = _number_kind(low) if _number_kind(low) == _number_kind(high) else None
    if kind is None:
        raise ConfigError(name, spec, "a list of choices", f"{name} is not a number field, so it has no range")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{name}.log", log, "true or false")
    if low >= high:
        raise ConfigError(name, spec, "a range with low < high", f"for one value, set it with --{name} instead")
    if log and low <= 0:
        raise ConfigError(f"{name}.low", low, "a number > 0 for a log range")
    step = spec.get("step")
    if step is not None:
        step = _step(name, step, kind, low, high, log)
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _check_name(name: str, spec: Any, base: dict[str, Any]) -> None:
    """A dotted field of ``base``'s sections (or a top-level key), and not one a sweep must keep."""
    if name in FIXED:
        raise ConfigError(name, spec, f"a field other than {', '.join(FIXED)}",
                          "a sweep searches one model on one data set as one experiment: start one sweep per model")
    section, dot, leaf = name.partition(".")
    if not dot:
        if name not in base or isinstance(base[name], dict):
            scalars = [k for k, v in base.items() if not isinstance(v, dict) and k not in FIXED]
            raise ConfigError(name, spec, f"a dotted config field such as optimizer.lr, or {', '.join(scalars)}")
        return
    if not isinstance(base.get(section), dict):
        sections = [k for k, v in base.items() if isinstance(v, dict)]
        raise ConfigError(name, spec, f"a field of a config section ({', '.join(sections)})")
    if leaf not in base[section]:
        raise ConfigError(name, spec, f"a field of {section} ({', '.join(base[section])})")


def _probe(base: dict[str, Any], name: str, value: Any, others: Mapping[str, Any] = {}, check: bool = True) -> Any:
    """``value`` as the config reads it for ``name`` in ``base`` (with ``others`` set too); ConfigError if refused.

    ``check=False`` only reads it (its type); the values are checked together, beside the other fields.
    """
    raw = copy.deepcopy(base)
    for key, v in {**others, name: value}.items():
        section, dot, leaf = key.partition(".")
        if dot:
            raw[section][leaf] = v
        else:
            raw[key] = v
    cfg = from_dict(raw)
    if check:
        validate(cfg)
    section, dot, leaf = name.partition(".")
    return getattr(getattr(cfg, section), leaf) if dot else getattr(cfg, name)


def _number_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    return "int" if isinstance(value, int) else "float" if isinstance(value, float) else None


def _choice(name: str, value: Any) -> Any:
    """A choice as Optuna can store it: list-valued fields as YAML flow text, read back by the config."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return yaml.safe_dump(list(value), default_flow_style=True).strip()
    raise ConfigError(name, value, "choices that are numbers, strings, true/false, null or lists of them")


def _step(name: str, step: Any, kind: str, low: Any, high: Any, log: bool) -> Any:
    """A range's spacing: positive, of the field's kind, dividing the range, and not with ``log``."""
    if log:
        raise ConfigError(f"{name}.step", step, "no step on a log range", "drop step or log")
    ok = isinstance(step, int) and not isinstance(step, bool) if kind == "int" else \
        isinstance(step, (int, float)) and not isinstance(step, bool) and math.isfinite(step)
    if not ok or step <= 0:
        raise ConfigError(f"{name}.step", step, f"a {'whole number' if kind == 'int' else 'number'} > 0")
    spans = (high - low) / step
    if abs(spans - round(spans)) > 1e-9:
        raise ConfigError(f"{name}.step", step, f"a step that divides high - low = {high - low}",
                          "change low, high or step so that high is reached")
    return int(step) if kind == "int" else float(step)


def _check_together(params: tuple[Param, ...], base: dict[str, Any]) -> None:
    """Each end value must be valid beside at least one assignment of the other swept fields.

    The base values come first (the common case: fields that do not depend on each other), then
    the other fields' end values, up to ``COMBINATIONS`` assignments; the first refusal is the one
    reported when none works.
    """
    for p in params:
        others = [q for q in params if q is not p]
        options = [(None, *q.ends()) for q in others]  # None: the field keeps its base value
        for value in p.ends():
            first: ConfigError | None = None
            for combo in itertools.islice(itertools.product(*options), COMBINATIONS):
                assigned = {q.name: v for q, v in zip(others, combo) if v is not None}
                try:
                    _probe(base, p.name, value, assigned)
                    break
                except ConfigError as e:
                    first = first or e
            else:
                if first is not None:
                    raise first
