"""Shared docstring text for the op wrappers: written once, filled into each docstring."""

from __future__ import annotations

import re
import textwrap


def fill_doc(**pieces: str):
    """Decorator: put shared text into a docstring.

    A docstring line holding only ``{name}`` is replaced by ``pieces[name]``, re-indented to that
    line's indentation (a piece may be written at any indentation), so that the rendered reST
    nests as the surrounding text does. Other braces in the docstring are left alone.
    """

    def fill_line(line: str) -> str:
        field = re.fullmatch(r"( *)\{(\w+)\}", line)
        if field is None or field.group(2) not in pieces:
            return line
        piece = textwrap.dedent(pieces[field.group(2)].strip("\n"))
        return textwrap.indent(piece, field.group(1))

    def decorate(fn):
        fn.__doc__ = "\n".join(fill_line(line) for line in fn.__doc__.split("\n"))
        return fn

    return decorate
