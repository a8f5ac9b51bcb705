"""What a page makes a browser load, read from its HTML."""

from __future__ import annotations

from html.parser import HTMLParser


class Links(HTMLParser):
    """Every URL a page makes the browser load: ``src`` and ``href`` attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def links_of(html: str) -> list[str]:
    parser = Links()
    parser.feed(html)
    return parser.urls
