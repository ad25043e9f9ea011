"""Sphinx extension: docstrings in this project write math as plain text, so keep it plain.

Docstrings say ``[B, *]``, ``z* = argmin ||g(z) - x||^2`` or ``batch_size * k``: to
reStructuredText a lone ``*`` opens emphasis and ``|x|`` is a substitution, which
turns readable docstrings into build errors (or eats characters). After napoleon has
converted Google/numpy sections, this escapes every ``*`` and ``|`` outside inline
literals, roles and genuine ``*emphasis*`` / ``**strong**``, so the rendered text
reads exactly as written in the source.
"""

from __future__ import annotations

import re

# ``literal``, :role:`target` and `interpreted` spans are left as they are
LITERAL = re.compile(r"(``.+?``|:[\w:+-]+:`[^`]+`|`[^`]+`_{0,2})")
# genuine emphasis/strong: *word ...* or **word ...** with no inner asterisk
EMPHASIS = re.compile(r"(?<![\w\\*])(\*\*[^\s*](?:[^*]*?[^\s*])?\*\*|\*[^\s*](?:[^*]*?[^\s*])?\*)(?![\w*])")
BULLET = re.compile(r"^(\s*[*+-] )(.*)$")
FIELD = re.compile(r"^(\s*:[^:]+:\s)(.*)$")
BARE = re.compile(r"(?<!\\)([*|])")


def _escape_plain(text: str) -> str:
    pieces = EMPHASIS.split(text)
    for index in range(0, len(pieces), 2):  # odd pieces are emphasis: keep
        pieces[index] = BARE.sub(r"\\\1", pieces[index])
    return "".join(pieces)


def escape_line(line: str) -> str:
    """Escape reST inline markup characters that the docstring means literally."""
    stripped = line.lstrip()
    if stripped.startswith(
        (">>>", "...", "..", ":param", ":type", ":returns", ":rtype", ":raises", ":ivar", ":vartype", "| ")
    ):
        # doctest lines, directives and napoleon's field names are markup already; escape only
        # the description after a field name
        field = FIELD.match(line)
        return field.group(1) + escape_line(field.group(2)) if field else line
    bullet = BULLET.match(line)
    if bullet:  # a "* item" bullet stays a bullet
        return bullet.group(1) + escape_line(bullet.group(2))
    pieces = LITERAL.split(line)
    for index in range(0, len(pieces), 2):  # odd pieces are literals/roles: keep
        pieces[index] = _escape_plain(pieces[index])
    return "".join(pieces)


def _in_literal_block(lines: list[str]) -> list[bool]:
    """Which lines belong to an indented literal block (after '::' or a code directive)."""
    flags, block_indent, expecting, indent_of_opener = [], None, False, 0
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if line.strip() and indent <= block_indent:
                block_indent = None
            else:
                flags.append(True)
                continue
        if expecting and line.strip():
            block_indent = indent_of_opener
            expecting = False
            flags.append(True)
            continue
        flags.append(False)
        if line.rstrip().endswith("::") or line.lstrip().startswith((".. code", ".. math", ".. doctest")):
            expecting, indent_of_opener = True, indent
    return flags


def process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    literal = _in_literal_block(lines)
    for index, line in enumerate(lines):
        if not literal[index]:
            lines[index] = escape_line(line)


def setup(app):
    # after sphinx.ext.napoleon (priority 500), which writes the field lists this sees
    app.connect("autodoc-process-docstring", process_docstring, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
