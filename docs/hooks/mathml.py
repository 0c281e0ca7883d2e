"""MkDocs hook: the pages' TeX as MathML, at build time — no JavaScript, no CDN, works offline.

``pymdownx.arithmatex`` (``generic: true``) wraps ``$...$`` as ``<span class="arithmatex">\\(...\\)
</span>`` and ``$$...$$`` as ``<div class="arithmatex">\\[...\\]</div>``; this hook replaces each
with the MathML of ``latex2mathml``, which browsers render natively (MathML Core). A formula it
cannot convert — a syntax error, or a command it does not know (which it would print as text)
— is a warning naming the page and the formula, so ``mkdocs build --strict`` fails.
"""

from __future__ import annotations

import html
import logging
import re

from latex2mathml.converter import convert

log = logging.getLogger("mkdocs.plugins.aevb.math")

# The delimiters arithmatex writes in generic mode: \( \) inline, \[ \] display (also for
# \begin{...} environments, which it keeps whole inside the brackets).
_MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<block>.*?)\\\])'
    r"\s*</(?P=tag)>",
    re.DOTALL,
)


# What latex2mathml writes for a command it does not know: the command, as text.
_UNKNOWN_COMMAND = re.compile(r">[^<]*(\\[A-Za-z]+)[^<]*<")


# Two spacings TeX has and latex2mathml's output lacks in a browser: a thin space between a
# function name and its argument (log w, not logw), none around a bar (p(x|z), not p(x | z)).
_FUNCTION_ARGUMENT = re.compile(
    r"(<mi>(?:arg|cos|cosh|cot|coth|det|dim|exp|inf|ker|lg|lim|ln|log|max|min|Pr|sin|sinh|sup"
    r"|tan|tanh)</mi>)(?=<(?:mi|mn|msub|msup|msubsup|mrow|mfrac|msqrt)\b)"
)
_BAR = '<mo stretchy="false">&#x0007C;</mo>'


def _tex_spacing(mathml: str) -> str:
    mathml = _FUNCTION_ARGUMENT.sub(r'\1<mspace width="0.1667em"></mspace>', mathml)
    return mathml.replace(_BAR, '<mo stretchy="false" lspace="0" rspace="0">&#x0007C;</mo>')


def to_mathml(tex: str, display: bool) -> str:
    """MathML for one formula (HTML entities in ``tex`` are decoded first); ``ValueError`` for a
    command latex2mathml does not know."""
    mathml = convert(html.unescape(tex).strip(), display="block" if display else "inline")
    unknown = _UNKNOWN_COMMAND.search(mathml)
    if unknown:
        raise ValueError(f"unknown command {unknown[1]}")
    mathml = _tex_spacing(mathml)
    return f'<div class="math-display">{mathml}</div>' if display else mathml


def on_page_content(html_text: str, page, **kwargs) -> str:
    def replace(match: re.Match) -> str:
        display = match["block"] is not None
        tex = match["block"] if display else match["inline"]
        try:
            return to_mathml(tex, display)
        except Exception as error:  # latex2mathml raises many kinds; any of them is a bad formula
            log.warning(
                "%s: latex2mathml cannot convert %r (%s: %s)",
                page.file.src_uri,
                html.unescape(tex).strip(),
                type(error).__name__,
                error,
            )
            return match[0]

    return _MATH.sub(replace, html_text)
