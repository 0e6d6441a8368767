"""HTML built by functions that escape every text and attribute value: nothing reaches a page unescaped
unless it is `Markup` this module made. No template engine: the pages are small, and this is the
whole of what they need (a library such as Jinja2 would cost the daemon more memory than the console
is allowed, docs/BENCHMARKS.md "console")."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape


VOID = frozenset({"meta", "link", "br", "input"})


class Markup(str):
    """HTML made here (already escaped)."""


def _children(children: Iterable[object]) -> str:
    out: list[str] = []
    for c in children:
        if c is None or c is False:
            continue
        if isinstance(c, Markup):
            out.append(c)
        elif isinstance(c, str):
            out.append(escape(c, quote=False))
        elif isinstance(c, (int, float)):
            out.append(escape(str(c), quote=False))
        else:
            out.append(_children(c))          # type: ignore[arg-type]  # a list of children
    return "".join(out)


def el(tag: str, *children: object, **attrs: object) -> Markup:
    """<tag attrs>children</tag>. Attribute names: a trailing _ is dropped (class_), _ becomes -
    (aria_label, data_model); True is a bare attribute, None and False leave it out."""
    parts = [tag]
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        name = name.rstrip("_").replace("_", "-")
        parts.append(name if value is True else f'{name}="{escape(str(value), quote=True)}"')
    head = "<" + " ".join(parts) + ">"
    if tag in VOID:
        return Markup(head)
    return Markup(f"{head}{_children(children)}</{tag}>")


def join(*children: object) -> Markup:
    return Markup(_children(children))
