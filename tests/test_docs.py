"""The docs tooling: the README as the site's home page, and the figures copied into docs/img.

`make lint` builds the site with `mkdocs build --strict`, which checks every link and anchor."""

import importlib.util
import re

import numpy as np
from PIL import Image

from tests.helpers import REPO


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme_hook = _load("mkdocs_readme")
docs_figures = _load("docs_figures")


def test_readme_links_into_docs_are_made_relative_to_the_docs_folder(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("See [Metrics](docs/metrics.md#loss), ![x](docs/img/a.png) and [top](#quick-start).\n")
    assert (
        readme_hook.readme_markdown(readme)
        == "See [Metrics](metrics.md#loss), ![x](img/a.png) and [top](#quick-start).\n"
    )


def test_every_docs_page_the_readme_links_exists_and_is_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = set(re.findall(r"\]\(docs/([^)#]+\.md)", (REPO / "README.md").read_text()))
    assert pages
    for page in pages:
        assert (REPO / "docs" / page).is_file(), page
        assert f": {page}" in nav, page


def test_figures_are_downscaled_and_kept_small(tmp_path):
    rng = np.random.default_rng(0)
    big = tmp_path / "figures" / "curves.png"
    big.parent.mkdir()
    Image.fromarray(rng.integers(0, 256, (900, 2400, 3), dtype=np.uint8)).save(big)  # noise: incompressible
    for name in docs_figures.FIGURES:
        if name != "curves.png":
            Image.new("RGB", (300, 200), "white").save(tmp_path / "figures" / name)
    assert docs_figures.main(["--figures", str(tmp_path / "figures"), "--out", str(tmp_path / "img")]) == 0
    with Image.open(tmp_path / "img" / "curves.png") as shrunk:
        assert shrunk.width == 1100 and shrunk.height == round(900 * 1100 / 2400)
    assert (tmp_path / "img" / "curves.png").stat().st_size <= 300 * 1024 * 1.5  # palette PNG of noise
    with Image.open(tmp_path / "img" / "comparison.png") as small:
        assert small.size == (300, 200)


def test_missing_figures_are_an_error(tmp_path, capsys):
    assert docs_figures.main(["--figures", str(tmp_path), "--out", str(tmp_path / "img")]) == 1
    assert "run the pipeline first" in capsys.readouterr().err
