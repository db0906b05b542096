"""The layout's rules, checked on the files: the applications and mgd.engine never name a method (they read its
capabilities), and the core imports none of them."""
import ast
import os
import re

import pytest

import mgd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPLICATIONS = ("cls", "seg", "unsup", "d2", os.path.join("mgd", "engine"))


def python_files(*folders):
    for folder in folders:
        for where, _, names in os.walk(os.path.join(ROOT, folder)):
            yield from (os.path.join(where, n) for n in sorted(names) if n.endswith(".py"))


def string_comparisons(path):
    """(line, text) of every comparison with a string constant, of every string in a tuple/list/set that is
    compared with ``in``, and of every call's first argument that is a string: where a name test or a method
    named by the application would be."""
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
                isinstance(node.args[0].value, str):  # option_default("mgd", ...), build_distiller("kd", ...)
            yield node.lineno, node.args[0].value
        if not isinstance(node, ast.Compare):
            continue
        for op, right in zip(node.ops, node.comparators):
            for side in (node.left, right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str):
                    yield node.lineno, side.value
                if isinstance(op, (ast.In, ast.NotIn)) and isinstance(side, (ast.Tuple, ast.List, ast.Set)):
                    yield from ((node.lineno, e.value) for e in side.elts
                                if isinstance(e, ast.Constant) and isinstance(e.value, str))


@pytest.mark.parametrize("folder", APPLICATIONS)
def test_no_application_names_a_method(folder):
    names = set(mgd.DISTILLERS)
    found = [f"{os.path.relpath(path, ROOT)}:{line}: {value!r}" for path in python_files(folder)
             for line, value in string_comparisons(path) if value in names]
    assert not found, "methods named (read a capability instead):\n" + "\n".join(found)


def test_the_core_imports_no_application_and_not_its_engine():
    pattern = re.compile(r"^\s*(from|import)\s+(cls|seg|unsup|d2|mgd_d2|detectron2|mgd\.engine)\b|"
                         r"^\s*from\s+\.+engine\b", re.M)
    core = [p for p in python_files("mgd") if os.sep + "engine" + os.sep not in p]
    found = [os.path.relpath(p, ROOT) for p in core if pattern.search(open(p).read())]
    assert not found, found
