"""Typed config dataclasses from YAML with ``--section.key=value`` overrides.

Dataclasses are the schema, YAML is the file, the command line overrides single
keys. Every value is type-checked against the dataclass annotations when it is
loaded, so a typo or a wrong type fails at start-up with one line naming the key,
not hours later deep inside a library.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A user's configuration mistake; the message is one line that says what to change."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert where it is lossless."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return _from_dict(tp, value, key + ".")
    if origin in (list, tuple):
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        if isinstance(value, str):
            # A bracket-less shorthand on the command line: --data.paths=a,b. Items of
            # a str list stay text; others are read as YAML, so 0.5,a,0.5,b is a weighted blend.
            parts = [v.strip() for v in value.split(",") if v.strip()]
            value = parts if item_tp is str else [_yaml_item(v) for v in parts]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}; {_list_syntax(key)}")
        try:
            items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        except ConfigError as exc:
            raise ConfigError(f"{exc}; {_list_syntax(key)}") from None
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads "3e-4" (no dot) as a string; it is a number to any user.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _yaml_item(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _list_syntax(key: str) -> str:
    return f"give a list as --{key}=a,b or --{key}='[a, b]' (YAML) or in the config file"


def _suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            where = f"valid keys of {prefix.rstrip('.')}" if prefix else "valid sections and keys"
            raise ConfigError(f"unknown config key '{prefix}{name}'{_suggest(name, fields)}; "
                              f"{where}: {', '.join(fields)}")
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without a value
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None


def config_from_dict(cls: type[T], data: Mapping[str, Any] | None) -> T:
    """Build ``cls`` from a nested mapping, checking every key and type."""
    return _from_dict(cls, data or {})


def known_settings(cls: type, data: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, Any], list[str]]:
    """``data`` without the keys ``cls`` does not know, and those keys (dotted).

    For settings written by another version (a checkpoint's config), where an unknown
    key is history, not a typo; user input goes through :func:`config_from_dict`, which refuses it.
    """
    hints = _hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    known, unknown = {}, []
    for name, value in data.items():
        if name not in fields:
            unknown.append(prefix + name)
        elif dataclasses.is_dataclass(hints[name]) and isinstance(value, Mapping):
            known[name], deeper = known_settings(hints[name], value, f"{prefix}{name}.")
            unknown += deeper
        else:
            known[name] = value
    return known, unknown


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (for YAML dumps and checkpoints)."""
    return dataclasses.asdict(cfg)


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """The one meaning of ``precision: auto`` (training, planning, evaluation): bf16 on GPU, fp32 on CPU."""
    if precision != "auto":
        return precision
    return "bf16" if on_gpu else "fp32"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 3e-4); the value is read as YAML."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body:
        raise ConfigError(f"override '{text}' must look like --section.key=value")
    key, raw = body.split("=", 1)
    path = [p.replace("-", "_") for p in key.split(".") if p]
    if not path:
        raise ConfigError(f"override '{text}' names no key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def merge_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating sections as needed."""
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"cannot set '{'.'.join(path)}': '{part}' is not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections")
    return data


def merged_settings(path: str | Path | None = None, overrides: Iterable[str] = (),
                    base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The nested mapping of settings: the YAML file, then ``base``, then the overrides (later wins)."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    for key, value in (base or {}).items():
        merge_override(data, key.split("."), value)
    for text in overrides:
        key_path, value = parse_override(text)
        merge_override(data, key_path, value)
    return data


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: Iterable[str] = (), base: Mapping[str, Any] | None = None) -> T:
    """YAML file (optional) + mapping ``base`` (optional) + ``--a.b=c`` overrides -> validated ``cls``.

    Later sources win: file, then ``base``, then overrides. ``validate()`` is called
    on every nested config dataclass that defines it, innermost first.
    """
    cfg = config_from_dict(cls, merged_settings(path, overrides, base))
    validate_config(cfg)
    return cfg


def given_keys(path: str | Path | None = None, overrides: Iterable[str] = (),
               base: Mapping[str, Any] | None = None) -> set[str]:
    """The dotted keys (``model.num_layers``) that the file, ``base`` or the overrides set explicitly.

    Lets a caller tell a value the user chose from a dataclass default, e.g. to
    take a checkpoint's model settings unless the user asked for others.
    """
    data = merged_settings(path, overrides, base)

    def walk(node: Mapping[str, Any], prefix: str) -> Iterable[str]:
        for key, value in node.items():
            if isinstance(value, Mapping) and value:
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield prefix + key

    return set(walk(data, ""))


def validate_config(cfg: Any) -> None:
    """Run ``validate()`` on each nested dataclass, innermost first."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate_config(value)
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()


def split_overrides(argv: Iterable[str], top_keys: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Separate ``--section.key=value`` and ``--section.key value`` overrides from ordinary arguments.

    Overrides come back as ``--section.key=value``; a dotted flag is a setting,
    an undotted one (``--config``) an ordinary argument unless it is one of
    ``top_keys`` (settings outside any section, e.g. ``precision``).
    """
    rest, overrides = [], []
    args, top = list(argv), set(top_keys)
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if arg.startswith("--") and ("." in name and "/" not in name or name[2:].replace("-", "_") in top):
            if "=" in arg:
                overrides.append(arg)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                overrides.append(f"{arg}={args[i + 1]}")
                i += 1
            else:
                raise ConfigError(f"{arg} needs a value: {arg}=VALUE or {arg} VALUE")
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def dump_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config, readable by :func:`load_config`."""
    from native_megatron.utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))


def field_docs(cls: type) -> dict[str, str]:
    """Each field's meaning: the comment lines above it in the class source, else its trailing comment.

    The comments are the documentation, so ``--help`` says what the source says.
    Base classes are read too; a field without a comment is left out.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_class_field_docs(klass))
    return docs


@functools.lru_cache(maxsize=None)
def _class_field_docs(cls: type) -> dict[str, str]:
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):  # no source (frozen app, REPL): help without meanings
        return {}
    source = textwrap.dedent("".join(lines))
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        body = ast.parse(source).body[0].body
    except (SyntaxError, tokenize.TokenError, IndexError, AttributeError):
        return {}
    src_lines = source.splitlines()
    docs = {}
    for stmt in body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above, n = [], stmt.lineno - 1
        while n >= 1 and src_lines[n - 1].lstrip().startswith("#"):
            above.insert(0, comments.get(n, ""))
            n -= 1
        inline = [comments[n] for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
                  if n in comments and not src_lines[n - 1].lstrip().startswith("#")]
        text = " ".join(t for t in (above or inline) if t)
        if text:
            docs[stmt.target.id] = text
    return docs


def _help_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " | ".join(_help_type(a) for a in args)
        return f"{inner} | null" if len(args) < len(typing.get_args(tp)) else inner
    if origin is Literal:
        return "{" + ",".join(str(c) for c in typing.get_args(tp)) + "}"
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list[{_help_type(args[0]) if args else 'any'}]"
    if origin is dict:
        return "mapping"
    if tp is Any:
        return "any"
    return _type_name(tp)


def _help_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text[:-len("\n...")].strip() if text.endswith("\n...") else text


def describe_config(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, meaning)`` for every setting of ``cls``, nested sections flattened."""
    hints, docs, rows = _hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe_config(tp, f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, _help_type(tp), _help_default(f), docs.get(f.name, "")))
    return rows


def top_level_keys(cls: type) -> list[str]:
    """The settings of ``cls`` that sit outside any section (``precision`` beside ``model``, ``optim``...)."""
    hints = _hints(cls)
    return [f.name for f in dataclasses.fields(cls) if f.init and not dataclasses.is_dataclass(hints[f.name])]


def format_config_help(cls: type, prefix: str = "", width: int = 100) -> str:
    """The settings of ``cls`` as ``--help`` text: ``--key TYPE (default: D)`` and its meaning below."""
    out = []
    for key, tp, default, doc in describe_config(cls, prefix):
        out.append(f"  --{key} {tp}  (default: {default})")
        if doc:
            out += textwrap.wrap(doc, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(out)
