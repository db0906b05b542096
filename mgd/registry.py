"""The registry of every distiller behind the one contract (:class:`mgd.distillers.base.Distiller`).

A method registers itself where it is defined::

    @mgd.register_distiller("my_method")
    class MyDistiller(mgd.Distiller):
        def __init__(self, t_net, s_net, weight: float = 1.0, **kwargs): ...
        def losses(self, s_feats, t_feats, s_out, t_out, target): ...

and from then on ``mgd.build_distiller("my_method", teacher, student)`` builds it, and every application
(``cls/main_mgd.py --distiller my_method``, ``seg/train.py``, ``unsup/``, d2's ``MGD.DISTILLER``) accepts it.
A method that lives in another package arrives through the ``mgd.distillers`` entry-point group (as pytest
plugins and timm's models do), read on the first look-up of the registry, never at ``import mgd``::

    # the other package's pyproject.toml
    [project.entry-points."mgd.distillers"]
    my_method = "my_package.distill:MyDistiller"

Every option of a method is a keyword parameter of its ``__init__`` with a default (following ``**kwargs`` up
its bases), so ``build_distiller(name, teacher, student)`` works for every name on torchvision classifiers, and
the applications generate a method's ``--<prefix>-<option>`` flags from its signature: the options it names in
``cli_options``, each with its default, its type (the annotation) and its help (the ``Args:`` entry of the
class docstring, Google style), see :func:`command_line_options` and :mod:`mgd.engine.args`.
"""
from __future__ import annotations

import inspect
import logging
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Set, TypeVar

from torch import nn

if TYPE_CHECKING:
    from .distillers.base import Distiller

__all__ = ["DISTILLERS", "ENTRY_POINT_GROUP", "register_distiller", "unregister_distiller", "registered_methods",
           "build_distiller", "distiller_options", "option_default", "CommandLineOption", "command_line_options",
           "documented_options"]

logger = logging.getLogger("mgd")

#: The entry-point group through which other packages add methods.
ENTRY_POINT_GROUP = "mgd.distillers"

T = TypeVar("T", bound=type)


class _Registry(Mapping):
    """name -> distiller class: mgd's own methods (registered when :mod:`mgd.distillers` is imported) and, from the
    first look-up on, those of the installed packages' ``mgd.distillers`` entry points."""

    def __init__(self) -> None:
        self._classes: Dict[str, type] = {}
        self._plugins_loaded = False

    def _load_plugins(self) -> None:
        """Every entry point once: a plugin that fails to import or is no Distiller is a warning (the others
        still load); a name that another class already holds is an error naming both, after all are read."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        clashes = []
        for ep in _entry_points():
            try:
                cls = ep.load()  # its module may register the class itself with the decorator
                if ep.name in self._classes and self._classes[ep.name] is not cls:
                    clashes.append(f"the entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP}) names "
                                   f"a method that is already registered ({self._classes[ep.name].__module__}."
                                   f"{self._classes[ep.name].__qualname__})")
                    continue
                self.add(ep.name, cls)
            except Exception as exc:  # a broken plugin must not break every other method
                logger.warning("distiller %r from the entry point %r could not be loaded (%s: %s); it is not "
                               "available", ep.name, ep.value, type(exc).__name__, exc)
        if clashes:
            raise RuntimeError("; ".join(clashes) + ": rename one of them")

    def add(self, name: str, cls: type) -> None:
        from .distillers.base import Distiller
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise TypeError(f"distiller {name!r} must be a subclass of mgd.Distiller, got {cls!r}")
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"a distiller's name must be a non-empty word, got {name!r}")
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"a distiller called {name!r} is already registered "
                             f"({self._classes[name].__module__}.{self._classes[name].__qualname__})")
        self._classes[name] = cls

    def remove(self, name: str) -> None:
        self._classes.pop(name, None)

    def __getitem__(self, name: str) -> type:
        if name not in self._classes:
            self._load_plugins()
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        if name not in self._classes:
            self._load_plugins()
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return iter(dict(self._classes))

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._classes)

    def __repr__(self) -> str:
        return f"DISTILLERS({', '.join(sorted(self))})"


def _entry_points():
    """The installed entry points of the group (``select`` since Python 3.10, a dict of groups before)."""
    from importlib.metadata import entry_points
    found = entry_points()
    return found.select(group=ENTRY_POINT_GROUP) if hasattr(found, "select") else found.get(ENTRY_POINT_GROUP, [])


#: name -> distiller class; every class takes (teacher, student, **options) with a default for each option.
DISTILLERS = _Registry()


def register_distiller(name: str) -> Callable[[T], T]:
    """Class decorator: register a :class:`~mgd.Distiller` subclass under ``name`` (ValueError when another class
    has that name already)."""
    def register(cls: T) -> T:
        DISTILLERS.add(name, cls)
        return cls
    return register


def unregister_distiller(name: str) -> None:
    """Remove ``name`` from the registry (a test's own method, once it is done)."""
    DISTILLERS.remove(name)


def registered_methods(**capabilities: Any) -> List[str]:
    """The names of the registered methods whose classes have these capability values, sorted: what an
    application offers, e.g. ``registered_methods(dense_outputs=True, needs_teacher=True)`` for a segmenter
    (see the capability attributes of :class:`~mgd.Distiller`), never a list of names."""
    return sorted(name for name, cls in DISTILLERS.items()
                  if all(getattr(cls, key) == value for key, value in capabilities.items()))


def build_distiller(name: str, t_net: nn.Module, s_net: nn.Module, **options) -> Distiller:
    """The distiller called ``name`` (see :data:`DISTILLERS`) with ``options``; ValueError listing the valid
    names for an unknown one, TypeError naming an option the method does not take."""
    if name not in DISTILLERS:
        raise ValueError(f"unknown distiller {name!r}; valid: {', '.join(sorted(DISTILLERS))}")
    unknown = sorted(set(options) - distiller_options(name))
    if unknown:
        raise TypeError(f"distiller {name!r} takes no option(s) {unknown}; its options: "
                        f"{', '.join(sorted(distiller_options(name)))}")
    return DISTILLERS[name](t_net, s_net, **options)


def _init_parameters(name: str) -> Dict[str, inspect.Parameter]:
    """The keyword parameters of the distiller called ``name``, following ``**kwargs`` up its bases (the
    most derived definition of a name wins)."""
    found: Dict[str, inspect.Parameter] = {}
    for cls in DISTILLERS[name].__mro__:
        if "__init__" not in vars(cls) or cls in (nn.Module, object):
            continue
        params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, teacher, student
        for p in params:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                found.setdefault(p.name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return found


def option_default(name: str, option: str) -> Any:
    """The default of ``option`` for the distiller called ``name`` (None when it has no such option)."""
    param = _init_parameters(name).get(option)
    return None if param is None or param.default is param.empty else param.default


def distiller_options(name: str) -> Set[str]:
    """The keyword options the distiller called ``name`` accepts (following ``**kwargs`` up its bases)."""
    return set(_init_parameters(name))


@dataclass(frozen=True)
class CommandLineOption:
    """One option of a method that applications offer as a flag: its keyword, default, type hint (resolved
    annotation) and help (the docstring's ``Args:`` entry)."""

    option: str
    default: Any
    annotation: Any
    help: str


_ARGS_HEADING = re.compile(r"^Args\b.*:\s*$")
_ARG_ENTRY = re.compile(r"^    (\w+(?:, \w+)*): (.*)$")


def documented_options(cls: type) -> Dict[str, str]:
    """option -> help text from the ``Args:`` sections (Google style, entries indented four spaces, continuation
    lines eight) of the class docstrings up ``cls``'s MRO; the most derived entry of a name wins."""
    found: Dict[str, str] = {}
    for klass in cls.__mro__:
        doc = vars(klass).get("__doc__")
        if not doc:
            continue
        names: List[str] = []
        in_args = False
        for line in inspect.cleandoc(doc).splitlines():
            if _ARGS_HEADING.match(line):
                in_args, names = True, []
                continue
            if not in_args:
                continue
            entry = _ARG_ENTRY.match(line)
            if entry:
                names = [n for n in entry.group(1).split(", ") if n not in found]
                for n in names:
                    found[n] = entry.group(2).strip()
            elif line.startswith("        ") and names:
                for n in names:
                    found[n] += " " + line.strip()
            elif line.strip() and not line.startswith(" "):
                in_args, names = False, []  # the section ended
    return found


def _init_annotations(name: str) -> Dict[str, Any]:
    """option -> resolved type hint, from the ``__init__`` of the class (up the MRO) that defines it."""
    hints: Dict[str, Any] = {}
    for cls in DISTILLERS[name].__mro__:
        if "__init__" in vars(cls) and cls not in (nn.Module, object):
            for key, hint in typing.get_type_hints(cls.__init__).items():
                hints.setdefault(key, hint)
    return hints


def command_line_options(name: str) -> List[CommandLineOption]:
    """The options of the method called ``name`` that applications offer as flags (its class's ``cli_options``),
    with their defaults, types and help; TypeError for an entry of ``cli_options`` that is no keyword option with
    a default, or that its docstrings do not document (a method's flags are never undocumented)."""
    cls = DISTILLERS[name]
    params, hints, helps = _init_parameters(name), _init_annotations(name), documented_options(cls)
    found = []
    for option in cls.cli_options:
        param = params.get(option)
        if param is None or param.default is param.empty:
            raise TypeError(f"{cls.__qualname__}.cli_options names {option!r}, which is no keyword option with a "
                            "default of its __init__")
        if option not in helps:
            raise TypeError(f"{cls.__qualname__}.cli_options names {option!r}, which no 'Args:' entry of its "
                            "docstring documents")
        found.append(CommandLineOption(option, param.default, hints.get(option, Any), helps[option]))
    return found
