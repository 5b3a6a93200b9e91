"""The docs: the README as the site's home page, the figures copied into docs/img, and the docs true to the code.

`make lint` builds the site with `mkdocs build --strict`, which checks every link and anchor. Here: every
`dvc`/`lesionseg` command of a fenced block goes through the parser the pipeline uses (DVC's argument parser and
Hydra overrides on params.yaml, lesionseg.cli.build_parser), the reference experiments of the docs are
recipes/reference.yaml, docs/reference.md names every params.yaml key, and no page names a deleted script."""

import contextlib
import dataclasses
import io
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lesionseg.cli import main as lesionseg_main
from lesionseg.recipes import flatten, load_recipe, recipe_path
from tests.helpers import REPO, load_script

readme_hook = load_script("mkdocs_readme")
docs_figures = load_script("docs_figures")


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


def test_the_reference_page_names_every_key_of_params_yaml():
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", (REPO / "docs" / "reference.md").read_text(), re.MULTILINE))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(rows) == set(params)
    missing = [
        f"{section}.{key}" for section, keys in params.items() for key in keys if f"`{key}`" not in rows[section]
    ]
    assert not missing, f"docs/reference.md's params.yaml table does not name {missing}"


def test_the_unfreeze_levels_table_is_the_models_parameter_counts():
    from lesionseg.model.model import parameter_counts_by_level

    text = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d)(?: / `all`| \(`frozen`\))? \| [^|]+ \| ([\d,]+) \|$", text, re.MULTILINE)
    counts = parameter_counts_by_level()
    assert len(rows) == 5, "docs/reference.md: the unfreeze levels table has one row per level, 0 to 4"
    for level, trainable in rows:
        key = "all" if level == "4" else level
        assert int(trainable.replace(",", "")) == counts[key]["trainable"], f"level {level}: `lesionseg summary`"


# --- The commands of the docs, through the parsers the pipeline uses -------------------------------------------
#
# Every command line in a fenced block (```bash, ```console, ```sh or a bare ```) of README.md and docs/*.md that
# runs `dvc ...`, `lesionseg ...` or `python scripts/NAME.py ...` (a script with a build_parser) is checked: a
# `dvc` command through DVC's own argument parser (an unknown flag fails), the `-S` overrides of `dvc exp run`
# applied to a copy of params.yaml with DVC's own Hydra override code (a key params.yaml lacks fails, unless `+`
# adds it under an existing parent), a `lesionseg` command through lesionseg.cli.build_parser() (so subcommands
# added later are checked too), a script through its own build_parser(). `$(lesionseg recipe NAME)` expands to
# that command's output, or to recipes/NAME.yaml's keys while the command does not exist yet.

COMMAND_LANGUAGES = {"", "bash", "console", "sh", "shell"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
SUBSTITUTION = re.compile(r"\$\(([^()]*)\)")
COMMENT = re.compile(r"(^|\s)#.*$")
SHELL_KEYWORDS = {"do", "then", "else", "time"}  # `for ...; do dvc exp run ...; done`
VARIABLE = re.compile(r"\$\{?(\w+)\}?")
RECIPES = REPO / "recipes"


@dataclasses.dataclass
class DocCommand:
    """One command of a docs page: where it is (``file:line``), its words, the ``$(...)`` it held."""

    where: str
    argv: list[str]
    substitutions: dict[str, str] = dataclasses.field(default_factory=dict)  # placeholder word -> inner command


def fenced_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of each fenced shell block; backslash-continued lines joined, `$ ` dropped."""
    lines, fence, pending, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        opening = FENCE.match(line)
        if fence is None:
            if opening:
                fence = (opening.group(1), opening.group(2).lower() in COMMAND_LANGUAGES)
            continue
        if opening and opening.group(1).startswith(fence[0]) and not opening.group(2):
            fence, pending = None, ""
            continue
        if not fence[1]:
            continue
        stripped = line.strip()
        if not pending:
            start = number
            stripped = stripped[2:] if stripped.startswith("$ ") else stripped
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append((start, pending + stripped))
        pending = ""
    return lines


def split_commands(line: str) -> list[tuple[list[str], dict[str, str]]]:
    """The simple commands of one shell line (split at ;, &&, ||, |), each with its `$(...)` placeholders."""
    substitutions = {}

    def placeholder(match):
        key = f"@subst{len(substitutions)}@"
        substitutions[key] = match.group(1).strip()
        return key

    line = COMMENT.sub("", SUBSTITUTION.sub(placeholder, line))
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, ""
    commands, words = [], []
    for word in lexer:
        if word and set(word) <= set(";&|"):
            commands.append(words)
            words = []
        else:
            words.append(word)
    commands.append(words)
    commands = [words[1:] if words and words[0] in SHELL_KEYWORDS else words for words in commands]
    return [(c, {k: v for k, v in substitutions.items() if any(k in w for w in c)}) for c in commands if c]


def doc_commands(path: Path, programs=("dvc", "lesionseg")) -> list[DocCommand]:
    """Every fenced command of ``path`` that runs one of ``programs``."""
    name = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found = []
    for number, line in fenced_lines(path.read_text(encoding="utf-8")):
        for argv, substitutions in split_commands(line):
            if argv[0] in programs or parsed_script(argv):
                found.append(DocCommand(f"{name}:{number}", argv, substitutions))
    return found


def docs_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def recipe_file(name: str) -> dict:
    """``recipes/<name>.yaml`` as ``{"section.key": value}``."""
    return load_recipe(recipe_path(name, RECIPES))


def expand(inner: str) -> list[str] | None:
    """The words `$(inner)` stands for, for `lesionseg recipe ...` (run in-process); None for any other
    substitution, or a recipe that does not exist (the checks then report it unexpanded)."""
    words = shlex.split(inner)
    if words[:2] != ["lesionseg", "recipe"]:
        return None
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        if lesionseg_main([*words[1:], "--recipes", str(RECIPES)]) != 0:
            return None
    return shlex.split(out.getvalue())


def expanded_argv(command: DocCommand) -> tuple[list[str], list[str]]:
    """The command's words with each `$(...)` expanded, and the substitutions that could not be expanded."""
    argv, unexpanded = [], []
    for word in command.argv:
        if word in command.substitutions:  # a word of its own: the words it prints
            words = expand(command.substitutions[word])
            if words is None:
                unexpanded.append(command.substitutions[word])
            argv.extend(words or [])
            continue
        for key, inner in command.substitutions.items():  # inside a word, e.g. "x=$(realpath y)": a stand-in
            if key in word:
                unexpanded.append(inner)
                word = word.replace(key, "SUBSTITUTED")
        # $PWD and the like as the shell would expand them; a loop's variable ($level) as a stand-in value
        argv.append(VARIABLE.sub(lambda m: os.environ.get(m.group(1), m.group(1)), word))
    return argv, unexpanded


def check_dvc(command: DocCommand, params: Path) -> str | None:
    """A problem with a `dvc ...` doc command (None: fine): DVC's parser, then for `exp run` its -S overrides
    applied to ``params`` (a copy of params.yaml, which is rewritten) by DVC's own Hydra code."""
    from dvc.cli import DvcParserError, parse_args
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    argv, _ = expanded_argv(command)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parse_args(argv[1:])
    except (DvcParserError, SystemExit):
        usage_error = stderr.getvalue().strip().splitlines()[-1:] or ["(no message)"]
        return f"{command.where}: `{shlex.join(argv)}`: dvc refuses it: {usage_error[0]}"
    overrides = to_path_overrides(getattr(args, "set_param", None) or [])
    if set(overrides) - {"params.yaml"}:
        return f"{command.where}: -S names another params file: {sorted(overrides)}"
    if overrides:
        try:
            apply_overrides(params, overrides["params.yaml"])
        except Exception as exc:  # DVC's InvalidArgumentError, with Hydra's reason as its cause
            return f"{command.where}: `{shlex.join(argv)}`: {exc}: {exc.__cause__ or ''}".strip()
    return None


def parsed_script(argv: list[str]) -> Path | None:
    """The script of a `python scripts/NAME.py ...` command whose script has a build_parser(), else None."""
    if len(argv) < 2 or Path(argv[0]).name not in ("python", "python3") or not argv[1].startswith("scripts/"):
        return None
    script = REPO / argv[1]
    return script if script.is_file() and "\ndef build_parser(" in script.read_text(encoding="utf-8") else None


def check_cli(command: DocCommand) -> str | None:
    """A problem with a `lesionseg ...` or `python scripts/NAME.py ...` doc command (None: fine): the command's
    own build_parser() (lesionseg.cli's, or the script's) must accept it."""
    from lesionseg.cli import build_parser

    argv, _ = expanded_argv(command)
    script = parsed_script(argv)
    if script is not None:
        build_parser, argv = load_script(script.stem).build_parser, argv[1:]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(argv[1:])
    except SystemExit:
        usage_error = stderr.getvalue().strip().splitlines()[-1:] or ["(no message)"]
        return f"{command.where}: `{shlex.join(argv)}`: {usage_error[0]}"
    return None


ALL_COMMANDS = [command for page in docs_pages() for command in doc_commands(page)]


def test_the_docs_have_commands_to_check():
    where = {command.where.split(":")[0] for command in ALL_COMMANDS}
    assert {"README.md", "docs/recipe.md", "docs/other-clinics.md", "docs/experiments.md"} <= where
    assert sum(command.argv[:3] == ["dvc", "exp", "run"] for command in ALL_COMMANDS) >= 10


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=[command.where for command in ALL_COMMANDS])
def test_doc_command_parses(command, tmp_path):
    if command.argv[0] == "dvc":
        params = tmp_path / "params.yaml"
        shutil.copy(REPO / "params.yaml", params)
        problem = check_dvc(command, params)
    else:
        problem = check_cli(command)
    assert problem is None, problem


def final_params(command: DocCommand, tmp_path: Path) -> dict:
    """params.yaml as the `dvc exp run` command would leave it, flattened."""
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    problem = check_dvc(command, params)
    assert problem is None, problem
    return flatten(yaml.safe_load(params.read_text()))


def experiment_name(command: DocCommand) -> str | None:
    """The `-n`/`--name` of a `dvc exp run` command (None for any other command, or without a name)."""
    if command.argv[:3] != ["dvc", "exp", "run"]:
        return None
    from dvc.cli import parse_args

    with contextlib.redirect_stderr(io.StringIO()):
        return parse_args(command.argv[1:]).name


def named_experiments(name: str) -> list[DocCommand]:
    return [command for command in ALL_COMMANDS if experiment_name(command) == name]


def test_recipe_and_other_clinics_pages_give_the_experiments_of_their_tables():
    for page in ("docs/recipe.md", "docs/other-clinics.md"):
        commands = [command for command in ALL_COMMANDS if command.where.startswith(page + ":")]
        runs = {experiment_name(command) for command in commands}
        assert {"reference", "default"} <= runs, page
        assert any(c.argv[:2] == ["dvc", "queue"] and "start" in c.argv for c in commands), page
        assert any(c.argv[:4] == ["lesionseg", "compare", "reference", "default"] for c in commands), page
        for command in commands:  # the experiments and comparisons run on the pipeline alone
            assert parsed_script(command.argv) or not any("scripts/" in w for w in command.argv), command.where


def test_the_reference_experiments_of_the_docs_are_the_reference_recipe(tmp_path):
    recipe = recipe_file("reference")
    commands = named_experiments("reference")
    assert commands
    for command in commands:
        assert "$(lesionseg recipe reference)" in " ".join(
            f"$({command.substitutions[w]})" if w in command.substitutions else w for w in command.argv
        ), f"{command.where}: the reference experiment should take its settings from `lesionseg recipe reference`"
        params = final_params(command, tmp_path)
        differ = {key: (params.get(key), value) for key, value in recipe.items() if params.get(key) != value}
        assert not differ, f"{command.where}: (command's value, reference recipe's) differ for {differ}"


def test_the_default_experiments_of_the_docs_change_no_recipe_key(tmp_path):
    recipe = recipe_file("reference")
    defaults = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    for command in named_experiments("default"):
        params = final_params(command, tmp_path)
        changed = {key: params.get(key) for key in recipe if params.get(key) != defaults.get(key)}
        assert not changed, f"{command.where}: the default experiment changes recipe keys {changed}"


def recipe_table() -> dict[str, tuple]:
    """docs/recipe.md's table of the recipe keys: key -> (reference value, default value), as YAML reads them."""
    text = (REPO / "docs" / "recipe.md").read_text()
    text = text[text.index("## The reference recipe") :]
    rows = re.findall(r"^\| `([\w.]+)` \| ([^|]+) \| ([^|]+) \|$", text, re.MULTILINE)
    return {key: tuple(yaml.safe_load(cell.strip().strip("*")) for cell in cells) for key, *cells in rows}


def test_the_recipe_table_is_where_the_recipes_differ():
    """Each row: the reference value from recipes/reference.yaml and the default from params.yaml; the rows are
    exactly the recipe keys where the two differ."""
    recipe = recipe_file("reference")
    defaults = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    expected = {key: (value, defaults[key]) for key, value in recipe.items() if value != defaults[key]}
    assert recipe_table() == expected, f"docs/recipe.md's recipe table (key: reference, default) should be {expected}"


DELETED_SCRIPTS = ("cv_ablation.py", "cv_table.py", "external_table.py", "ablation.py", "--print-reference")


def test_the_docs_name_no_deleted_script():
    named = [f"{page.name}: {name}" for page in docs_pages() for name in DELETED_SCRIPTS if name in page.read_text()]
    assert not named, f"the docs still name scripts that are gone: {named}"


BAD_PAGE = """\
Some text, `dvc exp run -S nope=1` outside a fence is not a command.

```bash
dvc exp run --queue -n ok -S train.epochs=3 \\
    -S '+evaluate.external.clinic_a=/data/a'   # a comment
dvc exp run -S train.epochz=3
dvc exp run --bogus-flag
$ lesionseg compare only-one
lesionseg summary --json; dvc queue status && make test
dvc exp run -S +train.epochs=3 $(lesionseg recipe nowhere)
```

```python
lesionseg = "not a shell command"
```
"""


def test_the_extractor_finds_fenced_commands_and_the_checks_fail_bad_ones(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(BAD_PAGE)
    commands = doc_commands(page)
    assert [(c.where.rsplit(":", 1)[1], c.argv[:3]) for c in commands] == [
        ("4", ["dvc", "exp", "run"]),
        ("6", ["dvc", "exp", "run"]),
        ("7", ["dvc", "exp", "run"]),
        ("8", ["lesionseg", "compare", "only-one"]),
        ("9", ["lesionseg", "summary", "--json"]),
        ("9", ["dvc", "queue", "status"]),
        ("10", ["dvc", "exp", "run"]),
    ]
    joined = commands[0]
    assert joined.argv[-2:] == ["-S", "+evaluate.external.clinic_a=/data/a"]  # continued, unquoted, no comment
    unexpanded = commands[-1]
    assert list(unexpanded.substitutions.values()) == ["lesionseg recipe nowhere"]
    assert expanded_argv(unexpanded) == (["dvc", "exp", "run", "-S", "+train.epochs=3"], ["lesionseg recipe nowhere"])

    def problem(command):
        params = tmp_path / "params.yaml"
        shutil.copy(REPO / "params.yaml", params)
        return check_dvc(command, params) if command.argv[0] == "dvc" else check_cli(command)

    problems = [problem(command) for command in commands]
    assert problems[0] is None and problems[4] is None and problems[5] is None
    assert "page.md:6" in problems[1] and "train.epochz" in problems[1]
    assert "page.md:7" in problems[2] and "--bogus-flag" in problems[2]
    assert "page.md:8" in problems[3] and "required" in problems[3]
    assert "page.md:10" in problems[6] and "already" in problems[6]  # `+` on a key params.yaml has


def test_a_recipe_substitution_expands_to_its_options():
    assert expand("lesionseg recipe reference --except evaluate")[:2] == ["-S", "data.size=128"]
    assert not any(w.startswith("evaluate.") for w in expand("lesionseg recipe reference --except evaluate"))
    assert expand("lesionseg recipe missing") is None
    assert expand("date +%s") is None


# --- Results tables: rendered from committed records, and none without one ----------------------------------------
#
# Every `<!-- results:... -->` region of README.md and docs/ must be what `python scripts/results.py render` makes
# of the records in results/ (a missing record is an error), and a table row holding a score (0.8613, +0.0049)
# outside a region has no record: only the history page may keep such numbers.

# Pages other engineers are changing while these records come in: their research tables move to the history page
# or into regions at the merge. Each must still hold unrecorded rows, so an entry cannot outlive its reason.
PAGES_WITH_OLD_TABLES: set[str] = set()


def test_every_results_table_is_what_the_records_render(monkeypatch):
    from lesionseg.experiments.results_tables import pages, regions, render_pages

    monkeypatch.chdir(REPO)  # the tables name their records as the command does, from the repository root
    differ, _ = render_pages(pages(Path(".")), Path("results"), write=False)
    assert not differ, (
        f"{differ}: their results tables differ from the records': run `python scripts/results.py render`"
    )
    assert sum(len(regions(page.read_text(encoding="utf-8"), str(page))) for page in pages(Path("."))) >= 1


def test_no_results_table_without_a_record():
    from lesionseg.experiments.results_tables import _HISTORY_PAGE, _unrecorded_rows, pages

    for page in pages(REPO):
        where = str(page.relative_to(REPO))
        rows = _unrecorded_rows(page.read_text(encoding="utf-8"))
        if where == _HISTORY_PAGE:
            continue
        if where in PAGES_WITH_OLD_TABLES:
            assert rows, f"{where} has no unrecorded table left: take it out of PAGES_WITH_OLD_TABLES"
            continue
        assert not rows, (
            f"{where}, lines {rows}: scores in a table no record renders: put the table in a "
            f"`<!-- results:... -->` region (python scripts/results.py render) or move it to {_HISTORY_PAGE}"
        )


# --- What the docs say about the code, checked against the code ---------------------------------------------------

MAKE_TARGET = re.compile(r"^([\w.-]+):(?!=)", re.MULTILINE)


def makefile() -> tuple[dict[str, str], dict[str, str]]:
    """The Makefile's targets (name -> the recipe's text, prerequisites included) and its simple variables."""
    text = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) :?= (.*)$", text, re.MULTILINE))
    targets, current = {}, None
    for line in text.splitlines():
        match = MAKE_TARGET.match(line)
        if match:
            current = match.group(1)
            targets[current] = line
        elif current and line.startswith("\t"):
            targets[current] += "\n" + line
        elif not line.strip() or line.startswith("#"):
            current = None if not line.strip() else current
    return targets, variables


def test_every_make_target_the_docs_name_exists():
    targets, _ = makefile()
    named = {
        (page.name, target)
        for page in docs_pages()
        for target in re.findall(r"`make ([\w-]+)[^`]*`|^make ([\w-]+)", page.read_text(), re.MULTILINE)
    }
    missing = sorted((page, t) for page, pair in named for t in pair if t and t not in targets)
    assert not missing, f"the docs name make targets the Makefile lacks: {missing}"


def test_a_make_target_described_with_its_pytest_markers_says_the_makefiles():
    """`make test-fast ... pytest -m "not slow"` where the Makefile runs `-m "not slow and not services"`: wrong."""
    targets, variables = makefile()
    checked = 0
    for page in docs_pages():
        for number, line in enumerate(page.read_text().splitlines(), 1):
            # A commands-table row (| `make T` | what it does |) or a commented command (make T   # what it does).
            match = re.match(r"(?:\| `make ([\w-]+)` \||make ([\w-]+)\s+#).*?pytest -m \"([^\"]+)\"", line)
            if not match:
                continue
            target, said = match.group(1) or match.group(2), match.group(3)
            recipe = targets[target]
            markers = [variables[name].split('"')[1] for name in ("FAST", "SLOW") if f"$({name})" in recipe]
            assert said in markers, f"{page.name}:{number}: `make {target}` runs pytest -m {markers}, not {said!r}"
            if "ruff" in recipe.splitlines()[0]:  # ruff is a prerequisite: the description says so
                assert "ruff" in line, f"{page.name}:{number}: `make {target}` runs ruff first"
            checked += 1
    assert checked >= 2  # the README's commands table and docs/development.md


def test_the_code_map_names_every_module():
    text = (REPO / "docs" / "development.md").read_text()
    code_map = text[text.index("## Code map") :]
    modules = [p for p in (REPO / "lesionseg").rglob("*.py") if p.name != "__init__.py"]
    missing = sorted(str(p.relative_to(REPO)) for p in modules if f"`{p.name}`" not in code_map)
    assert not missing, f"docs/development.md's code map does not name {missing}"


def test_the_pyfunc_overrides_in_the_docs_are_the_codes():
    from lesionseg.inference.settings import OVERRIDABLE as settings

    text = " ".join((REPO / "docs" / "predict.md").read_text().split())
    sentence = text[text.index("`params` can override") :].split(".")[0]
    assert set(re.findall(r"`(\w+)`", sentence)) - {"params"} == set(settings), sentence


def stage_params(stage: str) -> list[str]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["params"]


def test_the_cv_score_settings_in_the_docs_are_the_stages_params():
    text = " ".join((REPO / "docs" / "cross-validation.md").read_text().split())
    sentence = text[text.index("The inference settings (") :].split(")")[0]
    named = {word.removeprefix("evaluate.") for word in re.findall(r"`([\w.]+)`", sentence)}
    params = {p.removeprefix("evaluate.") for p in stage_params("cv_score") if p.startswith("evaluate.")}
    assert params - {"external"} <= named, f"docs/cross-validation.md: cv_score's params {params - named} unnamed"


def test_the_recipe_keys_in_the_reference_page_are_the_recipes():
    text = " ".join((REPO / "docs" / "reference.md").read_text().split())
    sentence = text[text.index("The recipe keys (") :].split(") are")[0]
    patterns = re.findall(r"`([\w.*]+)`", sentence)

    def covered(key):
        return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in patterns)

    missing = [key for key in recipe_file("reference") if not covered(key)]
    assert not missing, f"docs/reference.md's recipe keys do not cover {missing}"


def test_the_readme_stays_a_front_page():
    # Details belong in docs/: the README is what a newcomer reads first, whole.
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= 250, f"README.md has {lines} lines (at most 250: move details to docs/)"
