"""The one config shape behind the CLI, the notebooks' widgets and the dashboard.

A config is YAML with ``model:``, ``data:``, ``trainer:``, ``optimizer:`` and ``finetune:`` sections
(plus ``experiment`` and ``seed``), overridden by dotted keys as LightningCLI does::

    from lab.config import load_config
    cfg = load_config("gpt-nano", ["--trainer.max_steps", "200", "--data.path=book.txt"])
    cfg.model.n_embd          # 128
    print(to_yaml(cfg))       # the fully resolved config, as `lab fit --print_config` shows it

``model.name`` and ``data.name`` pick the section's dataclass from the registries in
``lab.families`` and ``lab.data``; the lab never imports a class named in a config, so a
config file cannot make it run arbitrary code. Each section's dataclass validates its own
values (``validate()``: the trainer section here, the optimizer's in ``lab.optim``, the
fine-tuning one's in ``lab.finetune``, the model's and data's beside their code); ``validate``
below adds the checks across sections (the model's family against its data, LoRA against the
family). Every refusal is a ``ConfigError`` naming the field, the value and the allowed range,
raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from lab.data import DATAMODULES
from lab.families import family
from lab.errors import ConfigError, LabError, require
from lab.finetune import FinetuneConfig
from lab.finetune import check as check_finetune
from lab.optim import OptimizerConfig

PRESETS_DIR = Path(__file__).parent / "configs"
"""Bundled presets (``configs/`` at the repo's top level links here)."""

STRATEGIES = (
    "auto", "ddp", "ddp_spawn", "ddp_notebook", "fsdp",
    "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload",
)
FSDP_STATE_DICTS = ("full", "sharded")
FSDP_SHARDINGS = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
INT_LIMIT = 2**63
"""Whole numbers must stay below this in size: torch and NumPy hold them in 64 bits."""
SEED_LIMIT = 2**32
"""NumPy's seeds (which ``seed_everything`` sets) are 32-bit."""
COLLECTIVE_TIMEOUT_LIMIT_S = 365 * 24 * 3600
"""A year: Python's timedelta (which the process group's timeout becomes) ends long before 2**63 seconds."""


@dataclass
class TrainerConfig:
    """How to train: passed to Lightning's Trainer by ``lab.train``."""

    max_steps: int = 600
    """Optimizer steps to run (each may accumulate several micro-batches)."""
    accelerator: str = "auto"
    """auto, cpu, gpu, cuda or mps."""
    devices: int | str = 1
    """Devices per node: a count, or "auto" for all visible ones."""
    num_nodes: int = 1
    """Machines taking part (see ``lab launch``)."""
    strategy: str = "auto"
    """auto, ddp, ddp_spawn, ddp_notebook, fsdp or deepspeed_stage_{2,3}[_offload]."""
    precision: str = "32-true"
    """Lightning precision: 32-true, bf16-mixed, 16-mixed, bf16-true, ..."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step (global batch = batch x devices x nodes x this)."""
    gradient_clip_val: float | None = 1.0
    """Clip the global gradient norm to this value; null turns clipping off."""
    val_check_interval: int = 100
    """Validate (and save best/last checkpoints) every this many training batches."""
    limit_val_batches: int = 20
    """Validation batches per check: keeps validation cheap on a laptop."""
    log_every_n_steps: int = 10
    """How often training metrics reach TensorBoard."""
    checkpoint_every_n_steps: int | None = 100
    """Also save last.ckpt every this many steps (for resuming after a kill); null = only at validation."""
    early_stopping_patience: int | None = None
    """Stop after this many validations without improvement of val/loss; null = never."""
    deterministic: bool = False
    """Ask torch for deterministic kernels (bitwise-reproducible runs, a little slower)."""
    activation_checkpointing: bool = False
    """Recompute each transformer block's activations in backward: less memory, ~30% more compute."""
    compile: bool = False
    """Run the model through ``torch.compile`` (faster steps on GPUs after a compile pause)."""
    fsdp_state_dict: str = "full"
    """FSDP checkpoints: full (one file, gathered on rank 0) or sharded (a folder, one shard per rank)."""
    fsdp_cpu_offload: bool = False
    """FSDP: keep parameters and gradients in CPU memory between uses (fits bigger models, slower)."""
    fsdp_sharding: str = "FULL_SHARD"
    """FSDP sharding: FULL_SHARD (ZeRO-3), SHARD_GRAD_OP (ZeRO-2), HYBRID_SHARD or NO_SHARD."""
    collective_timeout_s: int = 1800
    """Seconds a rank waits in a collective before giving up, so a dead rank ends the job instead of hanging it."""

    def validate(self) -> None:
        """Refuse invalid values with a ConfigError naming the field, the value and the allowed range."""
        t = self
        require(t.max_steps >= 1, "trainer.max_steps", t.max_steps, "a whole number >= 1")
        require(t.accelerator in ACCELERATORS, "trainer.accelerator", t.accelerator, f"one of {', '.join(ACCELERATORS)}")
        require(t.devices == "auto" or (isinstance(t.devices, int) and t.devices >= 1), "trainer.devices", t.devices,
                'a whole number >= 1 or "auto"')
        require(t.num_nodes >= 1, "trainer.num_nodes", t.num_nodes, "a whole number >= 1")
        require(t.strategy in STRATEGIES, "trainer.strategy", t.strategy, f"one of {', '.join(STRATEGIES)}")
        require(t.precision in PRECISIONS, "trainer.precision", t.precision, f"one of {', '.join(PRECISIONS)}")
        require(t.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", t.accumulate_grad_batches,
                "a whole number >= 1")
        require(t.gradient_clip_val is None or t.gradient_clip_val > 0, "trainer.gradient_clip_val",
                t.gradient_clip_val, "a number > 0, or null for no clipping")
        for key in ("val_check_interval", "limit_val_batches", "log_every_n_steps"):
            require(getattr(t, key) >= 1, f"trainer.{key}", getattr(t, key), "a whole number >= 1")
        require(t.checkpoint_every_n_steps is None or t.checkpoint_every_n_steps >= 1,
                "trainer.checkpoint_every_n_steps", t.checkpoint_every_n_steps, "a whole number >= 1, or null")
        require(t.fsdp_state_dict in FSDP_STATE_DICTS, "trainer.fsdp_state_dict", t.fsdp_state_dict,
                f"one of {', '.join(FSDP_STATE_DICTS)}")
        require(t.fsdp_sharding in FSDP_SHARDINGS, "trainer.fsdp_sharding", t.fsdp_sharding,
                f"one of {', '.join(FSDP_SHARDINGS)}")
        require(1 <= t.collective_timeout_s <= COLLECTIVE_TIMEOUT_LIMIT_S, "trainer.collective_timeout_s",
                t.collective_timeout_s, f"a whole number of seconds in [1, {COLLECTIVE_TIMEOUT_LIMIT_S}] (a year)")
        require(t.early_stopping_patience is None or t.early_stopping_patience >= 1,
                "trainer.early_stopping_patience", t.early_stopping_patience, "a whole number >= 1, or null")


@dataclass
class Config:
    """A whole training job: what to train, on what, and how."""

    experiment: str = "gpt-nano"
    """Runs are grouped under runs/<experiment>/."""
    seed: int = 1337
    """Seeds Python, NumPy, torch and the data windows: same seed, same run."""
    model: Any = field(default_factory=lambda: family(DEFAULT_MODEL).config())
    """Model section; ``model.name`` picks the family (gpt, cnn, vit, mlp, ... : ``lab.families``)."""
    data: Any = field(default_factory=lambda: DATAMODULES["text"][0]())
    """Data section; ``data.name`` picks text, digits or regression."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Trainer section."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer section."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Fine-tuning section: train every weight (full) or LoRA adapters on a frozen base (lab.finetune)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) ready for YAML and JSON."""
        return plain(dataclasses.asdict(self))


def plain(obj: Any) -> Any:
    """Plain data for YAML and JSON: tuples become lists, all the way down."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


SECTIONS: dict[str, type] = {"trainer": TrainerConfig, "optimizer": OptimizerConfig, "finetune": FinetuneConfig}
DEFAULT_MODEL = "gpt"
"""``model.name`` when a config names none (the lab's main job: a GPT on the bundled corpus)."""


def list_presets() -> list[str]:
    """Names of the bundled presets, e.g. ``['digits-cnn', 'gpt-nano', ...]``."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping safely (``!!python/...`` tags are refused).

    An empty file is refused too: training the defaults because a file came out empty (a
    failed download, an editor that crashed) would look like success.
    """
    if Path(path).is_dir():
        raise LabError(f"config {path} is a folder: give a YAML file in it, or one of the presets {list_presets()}")
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise LabError(f"config file {path} does not exist: give a path or one of the presets {list_presets()}")
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise LabError(f"config file {path} is not valid YAML ({yaml_problem(e)}): fix it, or give a preset") from None
    except OSError as e:
        raise LabError(f"cannot read config file {path}: {e.strerror or e}; check the path and its permissions")
    if data is None:
        raise LabError(f"config file {path} is empty: write the fields to change (see `lab fit --print_config`), "
                       "or give a preset")
    if not isinstance(data, dict):
        raise LabError(f"config file {path} must hold a mapping: write it as model:, data:, trainer:, optimizer: "
                       "sections (see `lab fit --print_config`)")
    return data


def yaml_problem(e: Exception) -> str:
    """One line for a YAML (or encoding) error: where it is and what is wrong, e.g.
    ``line 3: could not find expected ':'`` or ``line 1: a !!python/object tag, which is never run``."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
    if "constructor for the tag" in problem:
        tag = problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        problem = f"a {tag} tag, which is never run"
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem


def load_config(source: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Config:
    """Build and validate a Config from a preset name or YAML path plus dotted overrides.

    ``overrides`` is either CLI tokens (``["--trainer.max_steps", "200", "--seed=1"]``)
    or a mapping (``{"trainer.max_steps": 200}``).
    """
    raw: dict[str, Any] = {}
    if source is not None:
        path = Path(source)
        if not path.suffix and (PRESETS_DIR / f"{source}.yaml").exists():
            path = PRESETS_DIR / f"{source}.yaml"
        elif not path.exists():
            raise ConfigError("config", str(source), f"a preset ({', '.join(list_presets())}) or an existing YAML file")
        raw = read_yaml(path)
    pairs = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(list(overrides))
    for dotted, value in pairs.items():
        _set_dotted(raw, dotted, value)
    cfg = from_dict(raw)
    validate(cfg)
    return cfg


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """``["--a.b", "1", "--c=2"]`` -> ``{"a.b": "1", "c": "2"}`` (values stay strings)."""
    pairs: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise LabError(f"unexpected argument {tok!r}: overrides look like --trainer.max_steps 200")
        key, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens):
                raise LabError(f"--{key} needs a value: give one, e.g. --{key} VALUE")
            value = tokens[i + 1]
            i += 1
        pairs[key] = value
        i += 1
    return pairs


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parents), child, "a section (mapping)")
        node = child
    node[leaf] = value


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Turn plain data into a Config, coercing types; unknown keys are refused."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config", raw, "a mapping with model/data/trainer/optimizer sections")
    top = {f.name for f in dataclasses.fields(Config)}
    for key in raw:
        if key not in top:
            raise ConfigError(str(key), raw[key], f"a known top-level key ({', '.join(sorted(top))})")
    kwargs: dict[str, Any] = {}
    for key in ("experiment", "seed"):
        if key in raw:
            kwargs[key] = _coerce(key, raw[key], typing.get_type_hints(Config)[key])
    for section, cls in SECTIONS.items():
        kwargs[section] = _build(section, cls, raw.get(section) or {})
    fam = family(str((raw.get("model") or {}).get("name", DEFAULT_MODEL)))
    data_name = str((raw.get("data") or {}).get("name", fam.data[0]))
    _check_data(fam, data_name)
    kwargs["model"] = _build("model", fam.config, raw.get("model") or {})
    kwargs["data"] = _build("data", DATAMODULES[data_name][0], raw.get("data") or {})
    return Config(**kwargs)


def _check_data(fam: Any, data_name: str) -> None:
    """The data a family trains on: a mismatch is refused before any work."""
    require(data_name in DATAMODULES, "data.name", data_name, f"one of {', '.join(DATAMODULES)}")
    require(data_name in fam.data, "data.name", data_name,
           f"{' or '.join(fam.data)} (the data model.name={fam.name} trains on)")


def _build(section: str, cls: type, values: Any) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(section, values, "a mapping of fields")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{section}.{key}", value, f"a field of {section} ({', '.join(known)})")
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


_NULLS = (None, "null", "None", "none", "~")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or the command line) to the annotated type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value in _NULLS and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # "X or null": X's own message says more than a list of type names
            return _coerce(name, value, options[0])
        for arg in options:
            try:
                return _coerce(name, value, arg)
            except ConfigError:
                continue
        raise ConfigError(name, value, " or ".join(getattr(a, "__name__", str(a)) for a in args))
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, value, "a list such as [16, 32]")
        item_types = [args[0]] * len(value) if (len(args) == 2 and args[1] is Ellipsis) else list(args)
        if len(item_types) != len(value):
            raise ConfigError(name, value, f"a list of {len(item_types)} values")
        return tuple(_coerce(name, v, t) for v, t in zip(value, item_types))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(name, value, "true or false")
    if tp is int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            number = int(value)
        if number is None:
            raise ConfigError(name, value, "a whole number")
        # torch, NumPy and Lightning store these in 64-bit integers: a larger one would only
        # fail later, deep inside them, with an OverflowError.
        require(abs(number) < INT_LIMIT, name, value, "a whole number that fits in 64 bits (below 2**63)")
        return number
    if tp is float:
        try:
            number_f = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError, OverflowError):
            number_f = None
        if number_f is None:
            raise ConfigError(name, value, "a number")
        # inf and nan pass every "> 0" check (nan fails them all silently) and ruin training.
        require(math.isfinite(number_f), name, value, "a finite number (not inf or nan)")
        return number_f
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(name, value, "a string")
    return value


def validate(cfg: Config) -> None:
    """Refuse invalid values with a ConfigError naming field, value and allowed range."""
    require(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", cfg.experiment)), "experiment", cfg.experiment,
           "a name of letters, digits, '.', '_' or '-' (it becomes a folder under runs/)")
    require(0 <= cfg.seed < SEED_LIMIT, "seed", cfg.seed, f"a whole number in [0, {SEED_LIMIT - 1}]")
    m, d = cfg.model, cfg.data
    fam = family(m.name)
    _check_data(fam, d.name)
    m.validate()
    d.validate()
    if fam.check is not None:
        fam.check(cfg)  # the model against its data (e.g. an MLP's input width)
    cfg.trainer.validate()
    require(not cfg.trainer.activation_checkpointing or bool(fam.blocks), "trainer.activation_checkpointing",
           True, "false for this model", f"{fam.name} has no transformer blocks to recompute")
    cfg.optimizer.validate()
    cfg.finetune.validate()
    check_finetune(cfg.finetune, fam)  # LoRA needs the family to name its target layers


def to_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML (what ``--print_config`` prints)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: for hparams tables and config diffs."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_values(configs: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Every dotted key of the configs, sorted -> one value per config (None where one lacks it)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return {k: [f.get(k) for f in flat] for k in keys}


def config_diff(configs: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The keys of ``config_values`` whose values differ between the configs (``1`` and ``1.0`` do not).

    The one comparison of configs: the dashboard's Compare page and the notebook comparer both show it.
    """
    return {k: vals for k, vals in config_values(configs).items() if any(v != vals[0] for v in vals[1:])}
