"""Recipes as files: ``--config FILE`` (YAML whose keys are the script's own flag names) and ``--print-config``.

A config is a command line written down: ``lr: 0.1``, ``mgd-update-freq: 1`` (or ``mgd_update_freq``),
``arch: mobilenet_v1``, ``data: /path`` for the positional argument. Two keys are not flags: ``_base_`` (a
config, relative to this one, whose values this one extends and overrides: a paper's common recipe; or a list
of them, each overriding the ones before it, e.g. a schedule and a method's settings) and
``_meta_`` (where the recipe comes from and what the paper measured; read by ``configs/table.py``). Flags given on the command line override
the file, so every original command line keeps working with or without one. ``--print-config`` prints the
merged settings as YAML, each with where it came from (the file, the command line, the default), and exits;
its output is itself a valid config (it round-trips). Every value goes through its flag's own checks (type,
choices, range): a bad key or value is one line naming the file, the key and what is valid.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import UserError

__all__ = ["add_config_arguments", "parse_with_config", "config_actions"]


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The two flags; :func:`parse_with_config` reads them."""
    p.add_argument("--config", default=None, metavar="FILE", help="a YAML recipe whose keys are this script's "
                   "flag names (configs/ holds the papers' rows); flags given here override it")
    p.add_argument("--print-config", action="store_true", help="print the merged settings, each with its source "
                   "(the file, the command line or the default), as a YAML config, and exit")


def config_actions(p: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """key -> action for every setting a config may hold: each flag's long name without dashes (``lr``,
    ``mgd-update-freq``), its dest (``mgd_update_freq``), and the positionals' dests (``data``)."""
    found: Dict[str, argparse.Action] = {}
    for action in p._actions:
        if isinstance(action, argparse._HelpAction) or action.dest in ("config", "print_config"):
            continue
        long = [s[2:] for s in action.option_strings if s.startswith("--")]
        for key in long + [action.dest]:
            found.setdefault(key, action)
    return found


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """A YAML value as the flag would parse it from text: its type, choices and checks."""
    name = "/".join(action.option_strings) or action.dest
    if value is None:  # null: unset, as the flag's default None means
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UserError(f"{where}: {name} is a switch: give true or false, got {value!r}")
        return value
    many = action.nargs in ("*", "+") or isinstance(action.nargs, int)
    if many and not isinstance(value, list):
        value = [value]
    if not many and isinstance(value, (list, dict)):
        raise UserError(f"{where}: {name} takes one value, got {value!r}")

    def one(item: Any) -> Any:
        text = item if isinstance(item, str) else ("true" if item is True else "false" if item is False else str(item))
        try:
            parsed = action.type(text) if action.type is not None else text
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise UserError(f"{where}: {name} {item!r}: {exc}") from None
        if action.choices is not None and parsed not in action.choices:
            raise UserError(f"{where}: {name} {item!r} is not one of {', '.join(map(str, action.choices))}")
        return parsed
    return [one(v) for v in value] if many else one(value)


def load_yaml(path: str, chain: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """The file's mapping over its ``_base_`` chain (the bases first, in order, this file's keys overriding), ``_meta_``
    from this file alone; UserError for a missing file, bad YAML, a non-mapping or a cycle."""
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"--config: {path} not found" + (f" (the _base_ of {chain[-1]})" if chain else ""))
    if os.path.realpath(path) in chain:
        raise UserError(f"--config: {path} is its own _base_ (through {', '.join(chain)})")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"--config: {path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"--config: {path} must map flag names to values, got a {type(data).__name__}")
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    merged: Dict[str, Any] = {}
    for base in bases if isinstance(bases, list) else [bases]:  # a list: each extends the ones before it
        merged.update(load_yaml(os.path.join(os.path.dirname(path), str(base)), chain + (os.path.realpath(path),)))
    merged.pop("_meta_", None)
    return {**merged, **data}


def read_config(path: str, p: argparse.ArgumentParser) -> Dict[str, Any]:
    """dest -> value from the YAML file ``path`` (and its ``_base_``), each checked by its flag; UserError
    naming the problem."""
    data = load_yaml(path)
    actions = config_actions(p)
    values: Dict[str, Any] = {}
    for key, value in data.items():
        if key == "_meta_":
            continue
        action = actions.get(str(key))
        if action is None:
            close = difflib.get_close_matches(str(key), list(actions), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"--config {path}: {key!r} is no flag of {p.prog}{hint}")
        values[action.dest] = _convert(action, value, f"--config {path}")
    return values


def _given_on_command_line(p: argparse.ArgumentParser, argv: Sequence[str]) -> set:
    """The dests the command line sets (each flag's spelling, also --flag=value; positionals when present)."""
    given = set()
    for action in p._actions:
        if any(arg == s or arg.startswith(s + "=") for arg in argv for s in action.option_strings):
            given.add(action.dest)
    return given


def parse_with_config(p: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
                      parse: Optional[Callable[[List[str]], argparse.Namespace]] = None) -> argparse.Namespace:
    """Parse ``argv`` (with ``parse``, default ``p.parse_args``) over the ``--config`` file's values (the
    command line wins); with ``--print-config``, print the merged settings with their sources and exit 0. A
    positional argument the file gives (``data``) may be left out of the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config", default=None)
    known, _ = first.parse_known_args(argv)
    values = read_config(known.config, p) if known.config else {}
    positionals = [a for a in p._actions if not a.option_strings]
    if values:
        p.set_defaults(**values)
        for action in positionals:  # given by the file: optional on the command line
            if action.dest in values and action.nargs is None:
                action.nargs = "?"
    args = (parse or p.parse_args)(argv)
    if getattr(args, "print_config", False):
        print(format_config(p, args, values, _given_on_command_line(p, argv), known.config))
        sys.exit(0)
    return args


def format_config(p: argparse.ArgumentParser, args: argparse.Namespace, from_file: Dict[str, Any],
                  from_command_line: set, path: Optional[str]) -> str:
    """The merged settings as a YAML config, one ``key: value  # source`` line each (flag names as keys)."""
    import yaml

    lines: List[str] = [f"# {p.prog}: the merged settings (a valid --config)"]
    rows: List[Tuple[str, Any, str]] = []
    for action in p._actions:
        if isinstance(action, argparse._HelpAction) or action.dest in ("config", "print_config", "method_defaults"):
            continue
        if action.dest == argparse.SUPPRESS or not hasattr(args, action.dest):
            continue
        long = [s[2:] for s in action.option_strings if s.startswith("--")]
        key = long[0] if long else action.dest
        value = getattr(args, action.dest)
        if not action.option_strings:  # a positional: the command line's unless the file's value stands
            source = f"from {path}" if action.dest in from_file and from_file[action.dest] == value else "command line"
        else:
            source = ("command line" if action.dest in from_command_line else
                      f"from {path}" if action.dest in from_file else "default")
        rows.append((key, value, source))
    for key, value, source in rows:
        text = yaml.safe_dump({key: value}, default_flow_style=True, width=10 ** 6).strip()[1:-1]
        lines.append(f"{text}  # {source}")
    return "\n".join(lines)
