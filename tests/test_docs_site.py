"""The documentation site: it builds with ``mkdocs build --strict`` (no broken link, anchor,
snippet, formula or docstring reference), its API reference documents every public name, its
CLI reference every command and option, and its formulas are MathML."""

from __future__ import annotations

import argparse
import html
import importlib
import importlib.util
import logging
import pkgutil
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the documentation tools come with the dev extra")
pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")
pytest.importorskip("latex2mathml", reason="latex2mathml is not installed")

import aevb
from aevb.cli import build_parser, command_parsers

ROOT = Path(__file__).resolve().parents[1]
API = Path("reference") / "api"
_ID = re.compile(r'\bid="([^"]+)"')


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for this module as CI builds it."""
    out = tmp_path_factory.mktemp("site")
    started = time.perf_counter()
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if build.returncode != 0:
        pytest.fail(
            f"mkdocs build --strict failed ({build.returncode}):\n{build.stdout}\n{build.stderr}",
            pytrace=False,
        )
    print(f"mkdocs build --strict: {time.perf_counter() - started:.1f} s")
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def public_modules() -> list[types.ModuleType]:
    modules = [aevb]
    for info in pkgutil.walk_packages(aevb.__path__, "aevb."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # importing it would run the command
            modules.append(importlib.import_module(info.name))
    return modules


def canonical(value: object) -> str | None:
    """Where mkdocstrings documents ``value``: its defining module and qualified name."""
    if isinstance(value, types.ModuleType):
        return value.__name__
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    return f"{module}.{qualname}" if isinstance(module, str) and isinstance(qualname, str) else None


def test_every_module_has_an_api_page_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [
        module.__name__
        for module in public_modules()
        if not (ROOT / "docs" / API / f"{module.__name__}.md").is_file()
        or f"reference/api/{module.__name__}.md" not in nav
    ]
    assert not missing, (
        "modules without a page docs/reference/api/MODULE.md (holding `::: MODULE`) listed in "
        "mkdocs.yml's nav: " + ", ".join(missing)
    )


def test_every_exported_name_is_in_the_api_reference(site):
    ids: set[str] = set()
    for file in (site / API).rglob("*.html"):
        ids.update(_ID.findall(file.read_text(encoding="utf-8")))
    package_page = page(site, API / "aevb")
    package_ids = set(_ID.findall(package_page))
    missing = []
    for module in public_modules():
        for name in getattr(module, "__all__", ()):
            exported = f"{module.__name__}.{name}"
            home = canonical(getattr(module, name))
            if module is aevb:
                # On the package's own page: rendered there, or linked from there to its page.
                if exported in package_ids or (
                    home in ids and f'#{home}"' in package_page.replace("&quot;", '"')
                ):
                    continue
            elif exported in ids or home in ids:
                continue
            missing.append(exported if home in (None, exported) else f"{exported} ({home})")
    assert not missing, (
        f"{len(missing)} exported names are not in the API reference (docs/reference/api/): "
        + ", ".join(missing)
    )


def test_the_cli_reference_lists_every_command_and_option(site):
    text = page(site, "reference/cli")
    ids = set(_ID.findall(text))
    codes = {html.unescape(c) for c in re.findall(r"<code>(.*?)</code>", text, re.DOTALL)}
    missing = []
    for path, parser in command_parsers(build_parser()):
        if path.replace(" ", "-") not in ids:
            missing.append(f"command {path!r}")
        for action in parser._actions:
            if action.help is argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                if option not in codes:
                    missing.append(f"{path} {option}")
    assert not missing, "missing from docs/reference/cli.md's page: " + ", ".join(missing)


THEORY = ROOT / "docs" / "theory.md"


def test_the_theory_page_is_mathml(site):
    if "$" not in THEORY.read_text(encoding="utf-8"):
        pytest.skip("docs/theory.md has no formulas yet (a placeholder)")
    text = page(site, "theory")
    assert "<math" in text
    assert 'class="arithmatex"' not in text, "a formula was left as TeX"


def _math_hook():
    # Loaded by path, as mkdocs loads hooks.
    spec = importlib.util.spec_from_file_location(
        "aevb_docs_math_hook", ROOT / "docs/hooks/mathml.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arithmatex(text: str) -> str:
    import markdown

    return markdown.markdown(
        text,
        extensions=["pymdownx.arithmatex"],
        extension_configs={"pymdownx.arithmatex": {"generic": True}},
    )


class _Page:
    class file:
        src_uri = "example.md"


def test_the_math_hook_writes_mathml_for_inline_display_and_aligned_formulas(caplog):
    source = r"""Inline $\log p_\theta(x) < \mathcal{L}(\theta, \phi; x)$ and $z_i$.

$$
\mathcal{L} = \mathbb{E}_{q_\phi(z|x)}[\log p_\theta(x|z)] - D_{KL}(q_\phi(z|x) \| p(z))
$$

$$
\begin{align*}
a &= b + c \\
d &< e
\end{align*}
$$
"""
    with caplog.at_level(logging.WARNING):
        out = _math_hook().on_page_content(_arithmatex(source), page=_Page)
    assert not caplog.records
    assert "arithmatex" not in out
    assert out.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline">') == 2
    assert out.count('display="block"') == 2
    assert "<mtable" in out  # the aligned rows
    assert "&#x0003C;" in out  # "<", unescaped from &lt; before converting, then MathML's own


@pytest.mark.parametrize("formula", [r"\frac{a}{", r"\notacommand{x}"])
def test_the_math_hook_warns_of_a_formula_it_cannot_convert(caplog, formula):
    with caplog.at_level(logging.WARNING, logger="mkdocs.plugins"):
        out = _math_hook().on_page_content(_arithmatex(f"Bad ${formula}$."), page=_Page)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "example.md" in caplog.text and formula in caplog.text
    assert "arithmatex" in out  # left as it was: the strict build fails on the warning


def test_docstring_roles_become_links_and_a_stale_one_is_a_warning(tmp_path, caplog):
    import griffe

    package = tmp_path / "demo"
    package.mkdir()
    (package / "__init__.py").write_text(
        '"""See :class:`Thing`, :meth:`~demo.Thing.run`, :class:`torch.nn.Module` and\n'
        ':func:`~demo.gone`."""\n\n\nclass Thing:\n    """A thing."""\n\n'
        '    def run(self):\n        """Run :meth:`stop`."""\n',
        encoding="utf-8",
    )
    extensions = griffe.load_extensions(str(ROOT / "docs/hooks/griffe_roles.py"))
    with caplog.at_level(logging.WARNING, logger="mkdocs.plugins"):
        module = griffe.load("demo", search_paths=[tmp_path], extensions=extensions)
    text = module.docstring.value
    assert '<autoref identifier="demo.Thing" optional><code>Thing</code></autoref>' in text
    assert '<autoref identifier="demo.Thing.run" optional><code>run</code></autoref>' in text
    assert "<code>torch.nn.Module</code>" in text
    stale = sorted(r.getMessage() for r in caplog.records)
    assert len(stale) == 2, stale
    assert ":func:`~demo.gone`" in stale[0] or ":func:`~demo.gone`" in stale[1]
    assert any(":meth:`stop`" in message for message in stale)
