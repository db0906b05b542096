"""MkDocs hook: the parts of the site that would drift if written by hand are generated at build time, and
every command-line flag a page names is checked against the scripts' parsers.

Directives (an HTML comment on a line of its own, replaced before Markdown is rendered):

``<!-- mgd:options NAME -->``
    the flags of method NAME from the registry (:func:`mgd.registry.command_line_options`): flag, default,
    help, exactly what ``--help`` prints.
``<!-- mgd:methods -->``
    every registered method: its page, its paper (the first sentence of its module's docstring), what it
    distils (its capability attributes).
``<!-- mgd:recipes -->`` / ``<!-- mgd:recipes NAME -->``
    the recipes table of ``configs/table.py`` (every config, or those whose ``distiller`` is NAME).
``<!-- mgd:benchmark NAME -->``
    ``benchmarks/results/NAME.md``, the output file that ``python benchmarks/NAME.py --save`` writes.
``<!-- mgd:measured NAME -->``
    method NAME's rows of ``benchmarks/results/compare_distillers.md``.

Display equations (``$$ ... $$`` on lines of their own) become MathML at build time (latex2mathml), which
browsers render without a script: the site loads nothing from the internet.

A page that names a flag which no parser has (anywhere in inline or fenced code; the authors' flags that
pages quote are listed in :data:`FOREIGN_FLAGS`) is a warning, so ``mkdocs build --strict`` fails: a flag
renamed in code cannot live on in the documentation. Unknown or malformed directives, unknown method names
and missing result files are warnings too.
"""
from __future__ import annotations

import ast
import glob
import importlib
import logging
import os
import re
import sys
from typing import Callable, Dict, Iterable, List, Optional, Set

from mkdocs.plugins import event_priority

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
log = logging.getLogger("mkdocs.plugins.mgd")

#: Parser factories of the scripts (module, function): their flags include those generated from the registry.
PARSERS = (("cls.main_mgd", "get_parser"), ("cls.main_base", "get_parser"), ("seg.train", "get_parser"),
           ("unsup.main_moco_mgd", "get_parser"), ("d2.train_net", "argument_parser"),
           ("mgd.tools.sweep.cli", "parser"))
#: Folders whose scripts' literal ``add_argument("--flag", ...)`` calls count as well (demos, benchmarks, tools).
SCRIPT_FOLDERS = ("cls", "seg", "unsup", "d2", "benchmarks", "examples", "configs", "mgd")
#: Flags of other programs that pages quote in code, with whose they are.
FOREIGN_FLAGS = {
    "--logit-stand": "logit-standardization-KD's tools/train.py", "--base-temp": "logit-standardization-KD's "
    "tools/train.py", "--distillation-alpha": "DeiT's main.py", "--distillation-tau": "DeiT's main.py",
    "--distill": "RepDistiller's train_student.py", "--kd-alpah": "the sweep page's example of a misspelt flag",
}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?![\w-])")  # --with_underscores: the authors' scripts
DIRECTIVE = re.compile(r"^<!-- mgd:(\w+)(?: ([\w-]+))? -->[ \t]*$", re.M)
LEFT_OVER = re.compile(r"<!--\s*mgd:")
FENCE = re.compile(r"^([ \t]*)(```|~~~)[^\n]*\n(.*?)^\1\2[ \t]*$", re.M | re.S)
MATH = re.compile(r"^\$\$[ \t]*\n?(.*?)\n?\$\$[ \t]*$", re.M | re.S)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")

#: The page of each method that has one (a variant is described on its parent's page).
METHOD_PAGES = {"sm": "mgd"}


def _import_project() -> None:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)


def known_flags() -> Set[str]:
    """Every flag of the project's scripts: their parsers' (generated method flags included) and the literal
    ``add_argument("--...")`` calls of every script (the demos' and benchmarks' own)."""
    _import_project()
    flags = {"--help"}
    for module, factory in PARSERS:
        try:
            parser = getattr(importlib.import_module(module), factory)()
        except Exception as exc:  # a parser that cannot be built checks nothing: say so (strict fails)
            log.warning("mgd docs: the parser %s.%s() could not be built (%s: %s)", module, factory,
                        type(exc).__name__, exc)
            continue
        for action in parser._actions:
            flags.update(s for s in action.option_strings if s.startswith("--"))
    for folder in SCRIPT_FOLDERS:
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            flags.update(_literal_flags(path))
    return flags


def _literal_flags(path: str) -> Iterable[str]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--"):
                    yield arg.value


def named_flags(markdown: str) -> List[str]:
    """Every flag in the page's code, inline or fenced (a ``#`` comment of a code line left out)."""
    found: List[str] = []
    for block in FENCE.finditer(markdown):
        for line in block.group(3).replace("\\\n", " ").splitlines():
            found += FLAG.findall(line.split(" #", 1)[0])
    for span in INLINE.findall(FENCE.sub("", markdown)):
        found += FLAG.findall(span)
    return found


# ------------------------------------------------------------------------------------------------ directives

def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def options_table(name: str) -> str:
    from mgd.engine.args import option_flag
    from mgd.registry import command_line_options
    options = command_line_options(_method(name))
    if not options:
        return f"`{name}` has no options of its own."
    lines = ["| flag | default | what it sets |", "| --- | --- | --- |"]
    for o in options:
        default = ("(see text)" if o.default is None else f"`{int(o.default)}`" if isinstance(o.default, bool)
                   else f"`{o.default}`")  # a switch is 0/1 on the command line
        text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", o.help).replace("``", "`")
        lines.append(f"| `{option_flag(name, o.option)}` | {default} | {_cell(text)} |")
    return "\n".join(lines)


def _first_sentence(doc: Optional[str]) -> str:
    text = " ".join((doc or "").split())
    text = re.sub(r"^``\w+``:\s*", "", text).replace("``", "`")
    match = re.match(r"(.+?\.)(?:\s+(?=[A-Z])|$)", text)  # "Eq. 2", "Sec. 3", "et al." end no sentence
    return (match.group(1) if match else text)[:220]


def _distils(cls: type) -> str:
    what = ["nothing (the student alone)" if not cls.needs_teacher else "features" if cls.needs_features else "logits"]
    if cls.dense_outputs:
        what.append("dense outputs (segmentation)")
    return ", ".join(what)


def _method(name: Optional[str]) -> str:
    from mgd.registry import DISTILLERS
    if name not in DISTILLERS:
        raise KeyError(f"no registered method {name!r}")
    return name


def methods_table(src_uri: str) -> str:
    from mgd.registry import DISTILLERS
    up = "../" * src_uri.count("/")  # links are relative to the page's source file
    lines = ["| method | paper | distils |", "| --- | --- | --- |"]
    for name in sorted(DISTILLERS):
        cls = DISTILLERS[name]
        page = METHOD_PAGES.get(name, name)
        exists = os.path.exists(os.path.join(ROOT, "docs", "methods", f"{page}.md"))
        label = f"[`{name}`]({up}methods/{page}.md)" if exists else f"`{name}`"
        paper = _first_sentence(sys.modules[cls.__module__].__doc__) or _first_sentence(cls.__doc__)
        lines.append(f"| {label} | {_cell(paper)} | {_distils(cls)} |")
    return "\n".join(lines)


def recipes_table(name: Optional[str]) -> str:
    _import_project()
    from configs import table
    from mgd.engine.config import load_yaml
    if name is None:
        return table.table()
    _method(name)
    uses = [row for row in table.rows() if load_yaml(os.path.join(ROOT, row["config"])).get("distiller") == name]
    return table.table(uses) if uses else f"No recipe uses `{name}` yet."


def benchmark_file(name: str) -> str:
    path = os.path.join(RESULTS, f"{name}.md")
    if not os.path.exists(path):
        raise FileNotFoundError(f"benchmarks/results/{name}.md (run `python benchmarks/{name}.py --save`)")
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def measured_rows(name: str) -> str:
    """Method NAME's rows of the comparison (its ``distiller`` column), with the teacher and the student alone
    for reference, and the file's first line (how, when and where it was measured)."""
    _method(name)
    lines = benchmark_file("compare_distillers").splitlines()
    table = [line for line in lines if line.startswith("|")]
    if len(table) < 3:
        raise ValueError("benchmarks/results/compare_distillers.md has no table")

    def distiller(line: str) -> str:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        return cells[1] if len(cells) > 1 else ""
    rows = [line for line in table[2:] if distiller(line) == name]
    if not rows:
        return f"`{name}` has not been measured on the Fashion-MNIST proxy yet (`benchmarks/compare_distillers.py`)."
    reference = [line for line in table[2:] if distiller(line) in ("", "none")]
    return "\n".join([lines[0], "", *table[:2], *reference, *rows])


DIRECTIVES: Dict[str, Callable[..., str]] = {
    "options": lambda arg, page: options_table(arg),
    "methods": lambda arg, page: methods_table(page.file.src_uri),
    "recipes": lambda arg, page: recipes_table(arg),
    "benchmark": lambda arg, page: benchmark_file(arg),
    "measured": lambda arg, page: measured_rows(arg),
}


# --------------------------------------------------------------------------------------------- MkDocs events

_FLAGS: Set[str] = set()


@event_priority(-100)  # after the theme's offline plugin
def on_config(config, **kwargs):
    """Read the flags once per build (not per page): a test that renames one sees the new parsers. Drop the
    script that the offline plugin has browsers fetch from unpkg.com (a web-worker shim for search from
    file://): the site loads nothing from the internet; its search works when served (``make docs-serve``)."""
    _FLAGS.clear()
    _FLAGS.update(known_flags())
    extra = config.extra
    extra["polyfills"] = [url for url in extra.get("polyfills", []) if "://" not in url]
    return config


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    where = page.file.src_uri
    for flag in sorted(set(named_flags(markdown)) - _FLAGS - set(FOREIGN_FLAGS)):
        log.warning("mgd docs: %s names the flag %s, which no script of the project has", where, flag)

    def expand(match: re.Match) -> str:
        kind, arg = match.group(1), match.group(2)
        if kind not in DIRECTIVES:
            log.warning("mgd docs: %s has an unknown directive mgd:%s", where, kind)
            return match.group(0)
        try:
            return DIRECTIVES[kind](arg, page)
        except Exception as exc:
            log.warning("mgd docs: %s: mgd:%s %s failed (%s: %s)", where, kind, arg or "", type(exc).__name__, exc)
            return match.group(0)

    markdown = DIRECTIVE.sub(expand, markdown)
    for line in (line for line in markdown.splitlines() if LEFT_OVER.search(line)):
        log.warning("mgd docs: %s has a malformed directive (one line, `<!-- mgd:KIND NAME -->`): %s", where, line)
    return _math(markdown, where)


def _math(markdown: str, where: str) -> str:
    """``$$ LaTeX $$`` outside fenced code as a block of MathML."""
    from latex2mathml.converter import convert

    def render(match: re.Match) -> str:
        # sizes only: latex2mathml prints "\big\|" and "\bigl\lVert" as text
        latex = re.sub(r"\\[Bb]igg?[lrm]?(?=\\[|lrvV])", "", match.group(1).strip())
        try:
            mathml = convert(latex, display="block")
        except Exception as exc:
            log.warning("mgd docs: %s: an equation could not be converted (%s: %s)", where, type(exc).__name__, exc)
            return match.group(0)
        if re.search(r">\\[A-Za-z|{}]", mathml):  # a command it does not know, shown as text
            log.warning("mgd docs: %s: an equation has LaTeX that latex2mathml leaves as text: %s", where,
                        re.findall(r">(\\[^<]*)<", mathml))
        return f'<div class="mgd-math">{mathml}</div>'
    parts, last = [], 0
    for block in FENCE.finditer(markdown):
        parts += [MATH.sub(render, markdown[last:block.start()]), block.group(0)]
        last = block.end()
    return "".join(parts + [MATH.sub(render, markdown[last:])])
