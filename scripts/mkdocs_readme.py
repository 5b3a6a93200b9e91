"""MkDocs hook: the site's home page is README.md, so the README and the docs never say a thing twice.

docs/index.md is a stub; its content is replaced by the README with the README's links into docs/
(``docs/metrics.md``, ``docs/img/x.png``) made relative to the docs folder (``metrics.md``). A docs page
links the README as ``../README.md#anchor``, which resolves on GitHub; on the site that is the home page,
``index.md#anchor``. Links to other repository files would not resolve on the site: ``mkdocs build
--strict`` rejects them.
"""

import re
from pathlib import Path

DOCS_LINK = re.compile(r"\]\(docs/")
README_LINK = re.compile(r"\]\(\.\./README\.md(?=[#)])")


def readme_markdown(readme: Path) -> str:
    """README text with its ``](docs/...)`` links rewritten for a page in docs/."""
    return DOCS_LINK.sub("](", readme.read_text(encoding="utf-8"))


def _readme(config) -> Path:
    return Path(config.config_file_path).parent / "README.md"


def docs_markdown(markdown: str) -> str:
    """A docs page's text with its ``](../README.md...)`` links pointed at the site's home page."""
    return README_LINK.sub("](index.md", markdown)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "index.md":
        return readme_markdown(_readme(config))
    return docs_markdown(markdown)


def on_serve(server, config, builder):
    server.watch(str(_readme(config)))
    return server
