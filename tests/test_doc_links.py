"""README.md and docs/ as GitHub shows them: every relative link reaches a file of the repository and every
anchor a heading of its page (GitHub's anchors, not only the built site's, which `mkdocs build --strict`
checks), and every commit a page names is in the repository."""

import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, load_script

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
LINK = re.compile(r"!?\[[^\]\n]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
# A commit as pages name one: "commit 1a2b3c4", "commits 1a2b3c4 and ..." (7 to 40 hex digits, a digit in it).
COMMIT = re.compile(r"\bcommits?\s+(?P<sha>(?=[0-9a-f]*\d)[0-9a-f]{7,40})\b")


def pages(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        opening = FENCE.match(line)
        if opening and (fence is None or opening.group(1).startswith(fence)):
            fence = opening.group(1) if fence is None else None
        elif fence is None:
            yield number, line


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: the rendered text lower-cased, punctuation but hyphens and
    underscores dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings as GitHub makes them, repeats numbered (-1, -2, ...)."""
    found, seen = set(), {}
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match["text"])
        count = seen.get(slug, 0)
        found.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return found


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """``page:line: target (why)`` for each relative link or anchor of ``page`` that GitHub cannot resolve."""
    broken = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):  # a link in inline code is code
            target = match["target"]
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
                continue  # a URL (https:, mailto:): not a file of the repository
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(root)}:{number}: {target}"
            if not resolved.is_relative_to(root.resolve()) or not resolved.exists():
                broken.append(f"{where} (no such file in the repository)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{where} (no heading with that anchor in {resolved.relative_to(root.resolve())})")
    return broken


def named_commits(page: Path) -> list[tuple[int, str]]:
    return [(n, m["sha"]) for n, line in enumerate(page.read_text().splitlines(), 1) for m in COMMIT.finditer(line)]


def has_commit(sha: str, root: Path = REPO) -> bool:
    found = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=root, capture_output=True)
    return found.returncode == 0


def test_github_anchors_follow_githubs_rules():
    assert github_slug("Quick start") == "quick-start"
    assert github_slug("Another clinic's annotation style: `lesionseg calibrate`") == (
        "another-clinics-annotation-style-lesionseg-calibrate"
    )
    assert github_slug("On a CPU with native bf16 (AMX)") == "on-a-cpu-with-native-bf16-amx"
    assert github_slug("Change one thing, compare") == "change-one-thing-compare"


def test_the_checks_find_a_dead_link_a_dead_anchor_and_an_unknown_commit(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Top\n\n## Quick start\n\n[ok](docs/a.md#part) [ok](#quick-start)\n")
    page = tmp_path / "docs" / "a.md"
    page.write_text(
        "# A\n\n## Part\n\n[home](../README.md#quick-start) [site only](index.md#quick-start)\n"
        "[no anchor](../README.md#results) [url](https://example.org/x.md) `[code](nowhere.md)`\n"
        "```\n[in a fence](nowhere.md)\n```\n"
    )
    assert broken_links(tmp_path / "README.md", tmp_path) == []
    assert broken_links(page, tmp_path) == [
        "docs/a.md:5: index.md#quick-start (no such file in the repository)",
        "docs/a.md:6: ../README.md#results (no heading with that anchor in README.md)",
    ]
    page.write_text("run from commit 0000000, commits deadbee1 and the commit history\n")
    assert named_commits(page) == [(1, "0000000"), (1, "deadbee1")]
    assert not has_commit("0000000")


def test_every_relative_link_and_anchor_resolves_on_github():
    broken = [line for page in pages() for line in broken_links(page)]
    assert not broken, "links that GitHub cannot resolve:\n" + "\n".join(broken)


def test_every_commit_a_page_names_is_in_the_repository():
    if (
        subprocess.run(
            ["git", "rev-parse", "--is-shallow-repository"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        != "false"
    ):
        pytest.skip("a shallow clone (or no git): its history is not all here")
    named = [(page, n, sha) for page in pages() for n, sha in named_commits(page)]
    assert named, "no page names a commit: the pattern no longer matches the footnotes"
    missing = [f"{page.relative_to(REPO)}:{n}: {sha}" for page, n, sha in named if not has_commit(sha)]
    assert not missing, "commits named by a page that the repository does not have:\n" + "\n".join(missing)


def test_the_site_points_a_docs_pages_readme_links_at_its_home_page():
    hook = load_script("mkdocs_readme")
    text = "[Quick start](../README.md#quick-start), [home](../README.md), [x](../README.md.bak)"
    assert hook.docs_markdown(text) == "[Quick start](index.md#quick-start), [home](index.md), [x](../README.md.bak)"
