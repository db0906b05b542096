"""The documentation site: ``mkdocs build --strict`` passes offline, its generated tables follow the code, and a
flag renamed in code fails the build (docs/hooks/generate.py)."""
import glob
import logging
import os
import re
import socket

import pytest

from scripts import ROOT

os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")  # Material's banner about MkDocs 2.0 (printed, not logged)
from mkdocs.commands import build as mkdocs_build  # noqa: E402
from mkdocs.config import load_config  # noqa: E402
from mkdocs.exceptions import Abort  # noqa: E402


def build(site_dir):
    config = load_config(os.path.join(ROOT, "mkdocs.yml"), site_dir=str(site_dir), strict=True)
    mkdocs_build.build(config)


@pytest.fixture
def offline(monkeypatch):
    """Any connection the build attempts (fonts, inventories, a CDN) fails it."""
    def refuse(self, address):
        raise OSError(f"the docs build tried to connect to {address}")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def read(site, page):
    with open(os.path.join(site, f"{page}.html"), encoding="utf-8") as f:  # the offline plugin's URLs
        return f.read()


def test_the_strict_build_passes_offline_with_the_tables_generated_from_the_code(tmp_path, offline):
    import mgd
    from mgd.registry import command_line_options

    site = tmp_path / "site"
    build(site)
    kd = read(site, "methods/kd")
    alpha = next(o for o in command_line_options("kd") if o.option == "alpha")
    assert re.search(rf"<td><code>--kd-alpha</code></td>\s*<td><code>{alpha.default}</code></td>", kd)  # 0.9
    assert "<math" in kd and "$$" not in kd  # the equations, as MathML
    overview = read(site, "methods/index")
    assert all(f"<code>{name}</code>" in overview for name in mgd.DISTILLERS if name != "none")
    recipes = read(site, "recipes")
    assert "configs/cls/dkd_cifar100_r32x4_r8x4.yaml" in recipes  # the recipes table, from the configs
    benchmarks = read(site, "benchmarks")
    assert "match_channels" in benchmarks  # benchmarks/results/bench_matching.md
    pages = glob.glob(os.path.join(site, "**", "*.html"), recursive=True)
    assert len(pages) > 25
    for page in pages:
        with open(page, encoding="utf-8") as f:
            html = f.read()
        assert "<!-- mgd:" not in html, page  # every directive expanded
        fetched = [tag for tag in re.findall(r"<(?:link|script|img)\b[^>]*>", html)
                   if re.search(r'(?:src|href)="(?:https?:)?//', tag)]
        assert not fetched, page  # no font, script or picture from the internet
    api = read(site, "api")
    assert "build_distiller" in api  # mkdocstrings rendered the registry's docstrings


def test_a_flag_renamed_in_code_fails_the_strict_build(tmp_path, offline, monkeypatch, caplog):
    """KD's alpha renamed in code (``--kd-alpha`` to ``--kd-mix``, for kd and nd alike): the pages that still
    name ``--kd-alpha`` are warnings, and the strict build stops."""
    from mgd.engine import args

    option_flag = args.option_flag
    monkeypatch.setattr(args, "option_flag", lambda name, option: "--kd-mix" if option_flag(name, option) ==
                        "--kd-alpha" else option_flag(name, option))
    with caplog.at_level(logging.WARNING, logger="mkdocs.plugins.mgd"), pytest.raises(Abort):
        build(tmp_path / "site")
    named = [r.getMessage() for r in caplog.records if "--kd-alpha" in r.getMessage()]
    assert named and all("which no script of the project has" in m for m in named)
    assert any("methods/kd.md" in m for m in named)


def test_the_readmes_name_only_flags_that_exist():
    """README.md and the applications' READMEs, checked as the docs build checks its pages."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_generate", os.path.join(ROOT, "docs", "hooks", "generate.py"))
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    known = generate.known_flags()
    for readme in ("README.md", "cls/README.md", "seg/README.md", "d2/README.md", "unsup/README.md"):
        with open(os.path.join(ROOT, readme), encoding="utf-8") as f:
            named = set(generate.named_flags(f.read()))
        unknown = named - known - set(generate.FOREIGN_FLAGS)
        assert named and not unknown, (readme, sorted(unknown))
    assert os.path.getsize(os.path.join(ROOT, "README.md")) <= 12 * 1024
