"""One options dataclass per job: the command line, the studio and the provenance record derive from it.

A job's options are a dataclass whose fields are declared with ``option(...)``. The field's metadata
says everything the other consumers need, so adding an option is one edit (one field):

- ``help``, ``choices``, ``parse`` (argparse ``type``), ``flag`` (default ``--<field name>``; a tuple
  gives short and long spellings, e.g. ``("-b", "--base")``): ``add_options`` turns every field with
  ``cli=True`` into one argparse argument whose ``dest`` is the field name, and
  ``options_from_args`` turns the parsed namespace back into the dataclass.
- ``pixel=True``: the option changes the pixels of a pair, so it is written in the synthesis record
  and a rerun with another value is refused (``ldm.generation.pixel_settings``).
- ``studio``: the studio exposes it as a control (``True``, or a mapping of how: label, default,
  choices, range; see ``ldm.studio.core.studio_controls``).

Boolean fields (without ``parse``) become flags without a value:

- default ``False``: ``--name`` sets it (``store_true``);
- default ``True`` with an explicit ``flag`` (e.g. ``--no_progress``): the flag clears it (``store_false``);
- default ``True`` without a ``flag``: ``--name on|off`` (the on/off style; the parsed ``"on"``/``"off"``
  becomes ``True``/``False`` in ``options_from_args``).

Any other keyword of ``option`` is kept in the metadata; ``nargs``, ``const``, ``metavar``, ``required``
and ``action`` (e.g. ``"append"`` for a repeatable flag) are also passed to argparse.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional

MISSING = dataclasses.MISSING
ARGPARSE_KEYS = ("nargs", "const", "metavar", "required", "action")
ON_OFF = ("on", "off")


def option(default: Any = MISSING, *, help: str, choices: Optional[Iterable] = None,
           parse: Optional[Callable[[str], Any]] = None, cli: bool = True, pixel: bool = False,
           studio: bool | Mapping = False, flag: str | tuple | None = None, default_factory: Any = MISSING,
           **meta) -> dataclasses.Field:
    """A dataclass field carrying its command-line, studio and provenance description (module docstring)."""
    if not help:
        raise ValueError("option() needs a help text")
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("option() takes a default or a default_factory, not both")
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "parse": parse,
                "cli": cli, "pixel": pixel, "studio": studio, "flag": flag, **meta}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def fields_with(cls, key: str) -> list[dataclasses.Field]:
    """The fields of ``cls`` (a dataclass or an instance) whose metadata ``key`` is set (truthy), in order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get(key)]


def field_default(f: dataclasses.Field) -> Any:
    """The field's default value (``MISSING`` when it has none: a required option)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def flags(f: dataclasses.Field) -> tuple[str, ...]:
    """The spellings of the field's command-line flag (default ``--<field name>``)."""
    flag = f.metadata.get("flag")
    if flag is None:
        return (f"--{f.name}",)
    return (flag,) if isinstance(flag, str) else tuple(flag)


def bool_style(f: dataclasses.Field) -> Optional[str]:
    """How a boolean field is spelled on the command line: ``"set"`` (``store_true``), ``"clear"``
    (``store_false``), ``"on_off"``; None for any other field (and booleans with their own ``parse``)."""
    default = field_default(f)
    if f.metadata.get("parse") is not None or not isinstance(default, bool):
        return None
    if default is False:
        return "set"
    return "clear" if f.metadata.get("flag") is not None else "on_off"


def add_options(parser: argparse.ArgumentParser, cls, *, skip: Iterable[str] = ()) -> None:
    """One argparse argument per ``cli=True`` field of ``cls``, in field order (``dest`` = the field's
    name; required when the field has no default). ``skip``: field names left out."""
    skip = set(skip)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli") or f.name in skip:
            continue
        kw: dict = {"dest": f.name, "help": meta["help"]}
        default = field_default(f)
        style = bool_style(f)
        if style == "set":
            kw.update(action="store_true")
        elif style == "clear":
            kw.update(action="store_false")
        elif style == "on_off":
            kw.update(choices=ON_OFF, default="on")
        else:
            if default is MISSING:
                kw["required"] = True
            else:
                kw["default"] = default
            if meta.get("choices") is not None:
                kw["choices"] = meta["choices"]
            if meta.get("parse") is not None:
                kw["type"] = meta["parse"]
        kw.update({k: meta[k] for k in ARGPARSE_KEYS if k in meta})
        parser.add_argument(*flags(f), **kw)


def options_parser(cls, description: Optional[str]) -> argparse.ArgumentParser:
    """A command's parser: ``utils.cli.ArgumentParser`` (one-line errors) with ``description`` (the command's
    docstring, kept as written) and one flag per ``cli=True`` field of ``cls``."""
    from utils.cli import ArgumentParser

    parser = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, cls)
    return parser


def options_from_args(cls, namespace: argparse.Namespace, **overrides):
    """The ``cls`` instance of parsed arguments: each ``cli=True`` field from ``namespace`` (on/off
    flags as booleans), then ``overrides`` (field name → value) for anything else."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init or not f.metadata.get("cli") or not hasattr(namespace, f.name):
            continue
        value = getattr(namespace, f.name)
        if bool_style(f) == "on_off" and isinstance(value, str):
            value = value == "on"
        kwargs[f.name] = value
    kwargs.update(overrides)
    return cls(**kwargs)
