"""Loading our own YAML settings into dataclasses that reject unknown keys and check themselves.

LLaMA-Factory recipes are validated by LLaMA-Factory's own parser (see ``preflight``); this module
is for CoreTech's settings: pipelines, corpus mixtures, SFT/curriculum and scoring options. A typo
in a key must fail loudly with the file and the key, never fall back to a default silently.

It also owns the two rules every command shares: ``key=value`` overrides are an OmegaConf dotlist
(as LLaMA-Factory's ``read_args`` and torchtune's ``_merge_yaml_and_cli_args`` read them: ``1e-4`` is a
float whichever subcommand received it), and a relative path in a config names a file of the
repository that holds the config, whatever the current directory is.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from coretech.errors import CoreTechError

T = TypeVar("T")


class ConfigError(CoreTechError):
    """A settings file with an unknown key, a wrong type or a value that fails its own check."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def parse_overrides(items: list[str] | None, where: str = "command line") -> dict[str, Any]:
    """``["train.max_steps=2", "learning_rate=1e-4"]`` → ``{"train": {"max_steps": 2}, "learning_rate": 1e-4}``.

    One parser for ``coretech run``, ``train``, ``predict``, ``chat`` and ``api``: an OmegaConf dotlist,
    so values are typed as LLaMA-Factory types its own command-line overrides.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip() or key != key.strip() or any(not part for part in key.split(".")):
            raise ConfigError(f"{where}: override {item!r} is not of the form key=value")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([item]), resolve=False)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{where}: override {item!r}: {str(exc).splitlines()[0]}") from None
        _merge_into(result, parsed)
    return result


def _merge_into(target: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


def repo_root_of(path: str | Path) -> Path:
    """The repository that holds a config: the nearest folder above it that has a ``configs/`` folder.

    A config outside any repository (a one-off pipeline in /tmp) keeps the old rule: the current directory."""
    path = Path(path).resolve()
    for folder in path.parents:
        if (folder / "configs").is_dir():
            return folder
    return Path.cwd()


def resolve_path(value: str | Path, repo: Path) -> Path:
    """A path from a config: absolute as given, relative against the repository that holds the config."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (repo / path).resolve()


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def check_value(value: Any, tp: Any, where: str, *, text_takes_scalars: bool = False) -> Any:
    """``value`` as type ``tp`` (ints widen to float, text to Path), or ConfigError naming ``where``.

    The one type check for settings: our dataclasses and LLaMA-Factory's argument dataclasses (in
    the pre-flight) both go through it. ``text_takes_scalars``: LLaMA-Factory reads numbers and lists
    given for its text fields (``dataset: a,b`` or a list), so those pass for ``str``.
    """
    return _convert(value, tp, where, text_takes_scalars)


def _convert(value: Any, tp: Any, where: str, text_takes_scalars: bool = False) -> Any:
    origin = get_origin(tp)
    if tp is Any or isinstance(tp, str | typing.TypeVar):
        return value  # an annotation we cannot judge (a forward reference of an optional package)
    if tp is str and text_takes_scalars and isinstance(value, int | float | list) and not isinstance(value, bool):
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [member.value for member in tp]
        if value in allowed or isinstance(value, tp):
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {allowed}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where, text_takes_scalars)
            except ConfigError as exc:
                # A mapping meant for a settings class: its own error (unknown key …) says more.
                errors.insert(0 if isinstance(value, dict) and _is_dataclass_type(arg) else len(errors), str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return build_dataclass(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(item, item_tp, f"{where}[{i}]", text_takes_scalars) for i, item in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        _, value_tp = get_args(tp) or (Any, Any)
        return {k: _convert(v, value_tp, f"{where}.{k}", text_takes_scalars) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, str):
        return Path(value)
    if isinstance(tp, type):
        if tp is int and isinstance(value, bool):
            raise ConfigError(f"{where}: expected int, got bool")
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def build_dataclass(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build ``cls`` from a mapping; unknown keys and wrong types raise ConfigError naming ``where.key``.

    After construction, a ``check()`` method on the dataclass (if any) runs so each settings class
    states its own invariants next to its fields.
    """
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], f"{where}.{name}")
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r}")
    instance = cls(**kwargs)
    check = getattr(instance, "check", None)
    if callable(check):
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return instance


def load_dataclass(cls: type[T], path: str | Path) -> T:
    """Load a YAML file into ``cls``; the file path prefixes every error."""
    return build_dataclass(cls, load_yaml(path), str(path))


# CoreTech's own predict-recipe keys (grounded answers, docs/inference.md) and their types; they are
# taken out of the recipe before LLaMA-Factory's key check and parser see it.
CORETECH_PREDICT_KEYS: dict[str, type] = {
    "constrain_codes": bool,  # IPC codes only from the scheme (coretech.infer.constrain)
    "retrieval_k": int,  # codes a retrieval answer lists (coretech.ground)
}


def split_coretech_keys(values: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(LLaMA-Factory's keys, CoreTech's predict keys) of a recipe; a CoreTech key of the wrong type is
    an error naming the file and key."""
    ours = {k: values[k] for k in CORETECH_PREDICT_KEYS if k in values}
    for key, value in ours.items():
        wanted = CORETECH_PREDICT_KEYS[key]
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: {key} must be a {wanted.__name__}, got {value!r}")
    return {k: v for k, v in values.items() if k not in ours}, ours
