"""A small document model rendered to Markdown and to a self-contained HTML page."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Doc:
    """Headings, paragraphs, tables and figures, in order."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[object]]) -> None:
        self.blocks.append(("table", (header, [[_cell(c) for c in r] for r in rows])))

    def figure(self, path: Path, caption: str, root: Path) -> None:
        """A figure relative to the report's folder `root` (skipped if the file is missing)."""
        if path.is_file():
            self.blocks.append(("img", (path.relative_to(root).as_posix(), caption)))
        else:
            self.p(f"*(figure not available: {path.relative_to(root).as_posix()})*")

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h":
                out += [f"{'#' * value[0]} {value[1]}", ""]
            elif kind == "p":
                out += [value, ""]
            elif kind == "ul":
                out += [f"- {item}" for item in value] + [""]
            elif kind == "table":
                header, rows = value
                out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                out += ["| " + " | ".join(r) + " |" for r in rows] + [""]
            elif kind == "img":
                out += [f"![{value[1]}]({value[0]})", f"*{value[1]}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h{value[0]}>{e(value[1])}</h{value[0]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{e(h)}</th>" for h in header)
                cells = "".join(
                    "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows
                )
                body.append(f"<table><tr>{head}</tr>{cells}</table>")
            elif kind == "img":
                body.append(
                    f'<figure><img src="{e(value[0])}" alt="{e(value[1])}">'
                    f"<figcaption>{e(value[1])}</figcaption></figure>"
                )
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
            "figcaption{color:#555;font-size:90%}"
        )
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{e(self.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
        )


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _inline(text: str) -> str:
    """Escape, then render **bold**, [links](url) and *italic* as Markdown does."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)
    return re.sub(r"\*(.+?)\*", r"<i>\1</i>", text)
