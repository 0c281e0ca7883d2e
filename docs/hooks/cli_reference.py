"""MkDocs hook: the CLI reference, generated from ``aevb.cli.build_parser()`` at build time.

A page holding the marker ``<!-- aevb-cli-reference -->`` gets, in its place, every command and
sub-command of the parser (``aevb reproduce figure2`` included): its help, usage, and a table of
its arguments (flags, value, default, choices, help) per argument group. Read from the parser
itself, the page cannot drift from the command.
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Iterator
from functools import partial

MARKER = "<!-- aevb-cli-reference -->"
USAGE_WIDTH = 72  # fits the page's text column

# Characters that would otherwise mean something in a markdown table cell (|), to HTML (<, >, &)
# or to a markdown extension ($ for arithmatex, * _ ` [ ] \ for markdown inline syntax).
_ENTITIES = {c: f"&#{ord(c)};" for c in "|$*_`[]\\"}


def cell(text: object) -> str:
    """``text`` escaped for a markdown table cell: shown literally, whatever it holds."""
    escaped = html.escape(" ".join(str(text).split()), quote=False)
    return "".join(_ENTITIES.get(c, c) for c in escaped)


def code(text: object) -> str:
    return f"<code>{cell(text)}</code>" if str(text) else ""


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, list[str], object]]:
    """(name, help, aliases, parser) of each sub-command of ``parser``, in declaration order."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        seen: dict[int, list[str]] = {}
        for name, sub in action.choices.items():
            seen.setdefault(id(sub), []).append(name)
        for names in seen.values():
            name, *aliases = names
            yield name, helps.get(name) or "", aliases, action.choices[name]


def _metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    metavar = action.metavar or (action.dest if not action.option_strings else action.dest.upper())
    if isinstance(metavar, tuple):
        return " ".join(metavar)
    return {
        None: metavar,
        argparse.OPTIONAL: f"[{metavar}]",
        argparse.ZERO_OR_MORE: f"[{metavar} ...]",
        argparse.ONE_OR_MORE: f"{metavar} [{metavar} ...]",
        argparse.REMAINDER: "...",
    }.get(
        action.nargs,
        " ".join([metavar] * action.nargs) if isinstance(action.nargs, int) else metavar,
    )


def _default(action: argparse.Action) -> str:
    default = action.default
    if default is None or default is argparse.SUPPRESS:
        return ""
    if isinstance(action, argparse.BooleanOptionalAction):  # --x | --no-x: which one is on
        return action.option_strings[0 if default else 1]
    if action.nargs == 0:  # store_true and the like: off unless given
        return ""
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default))
    return str(default)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    return parser._get_formatter()._expand_help(action)


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter_class = parser.formatter_class
    parser.formatter_class = partial(formatter_class, width=USAGE_WIDTH)
    try:
        return parser.format_usage().strip()
    finally:
        parser.formatter_class = formatter_class


def _argument_table(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> list[str]:
    rows = ["| argument | value | default | choices | help |", "|---|---|---|---|---|"]
    for action in actions:
        if action.help is argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        names = action.option_strings or [action.metavar or action.dest]
        choices = " ".join(map(str, action.choices)) if action.choices else ""
        rows.append(
            "| "
            + " | ".join(
                [
                    ", ".join(code(name) for name in names),
                    code(_metavar(action)),
                    code(_default(action)),
                    code(choices),
                    cell(_help(parser, action)),
                ]
            )
            + " |"
        )
    return rows if len(rows) > 2 else []


def command_reference(parser: argparse.ArgumentParser, path: str, help: str = "", level: int = 2):
    """Markdown lines for ``parser`` (the command ``path``) and, below it, its sub-commands."""
    anchor = path.replace(" ", "-")
    lines = [f"{'#' * min(level, 6)} {path} {{#{anchor}}}", ""]
    for text in dict.fromkeys(filter(None, (help, parser.description))):
        lines += [cell(text), ""]
    lines += ["```text", _usage(parser), "```", ""]
    children = list(subcommands(parser))
    if children:
        lines += ["| command | help |", "|---|---|"]
        for name, sub_help, aliases, _ in children:
            label = f"[{code(name)}](#{anchor}-{name})"
            if aliases:
                label += " (" + ", ".join(code(a) for a in aliases) + ")"
            lines.append(f"| {label} | {cell(sub_help)} |")
        lines.append("")
    for group in parser._action_groups:
        table = _argument_table(parser, group._group_actions)
        if table:
            title = group.title or "arguments"
            lines += [f"**{cell(title[0].upper() + title[1:])}**", "", *table, ""]
    if parser.epilog:
        lines += [cell(parser.epilog), ""]
    for name, sub_help, _, sub in children:
        lines += command_reference(sub, f"{path} {name}", sub_help, level + 1)
    return lines


def cli_reference() -> str:
    from aevb.cli import build_parser

    parser = build_parser()
    lines = command_reference(parser, parser.prog)
    return "\n".join(['<div class="cli-reference" markdown>', "", *lines, "", "</div>"])


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
