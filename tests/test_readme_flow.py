"""The README followed literally, as a newcomer does: its "Quick start", "Look at your results" and "Change one
thing, compare" blocks run as written, in one fresh shell, in a clean clone, on isic2016-mini.

What the test changes, and only that: the clone's source is a snapshot of this checkout (uncommitted edits
included); ``make repro`` gets the README's own local-archive options (its ``isic2016-dev`` block, pointed at
``isic2016-mini`` and at ``../shared`` by its absolute path, as the clone is not beside it) and one epoch a phase
through the same ``-S`` options; the clone's ``.venv`` is this interpreter's virtual environment (made by
``make setup``, which ``.ci/run``'s ``make test`` runs on its clean clone) so ``make setup`` finds it installed;
``PYTHONPATH`` is the clone, so the ``lesionseg`` command runs the clone's code, not that of the checkout the
environment was installed from. The shell's ``PATH`` has no ``dvc`` or ``lesionseg`` until the README puts them
there: a README that forgets to is a failure here, as for a newcomer."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_shared
from tests.helpers import GIT_IDENTITY, MINI, REPO, SHARED

SECTIONS = ("Quick start", "Look at your results", "Change one thing, compare")
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
DEV_SET = "../shared/data/isic2016-dev"
SHORT = "-S train.epochs=1"  # the -S kind of option the README shows: a short schedule (finetune inherits it)
TOOLS = ("dvc", "lesionseg")


def section(text: str, title: str) -> str:
    """A ``## title`` section of the README, subsections included, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def bash_blocks(text: str) -> list[str]:
    return [block for block in BASH_BLOCK.findall(text)]


def local_archive_options(quick_start: str) -> str:
    """The README's ``make repro SET="..."`` options for the development sets beside the repository, on
    isic2016-mini and on ../shared by its absolute path."""
    for block in bash_blocks(quick_start):
        match = re.search(r'^make repro SET="([^"]*)"', block, re.M)
        if match and DEV_SET in match.group(1):
            options = match.group(1).replace(DEV_SET, str(MINI)).replace("../shared/", f"{SHARED}/")
            return f"{options} {SHORT}"
    raise AssertionError(f'README.md\'s Quick start has no `make repro SET="..."` block for {DEV_SET}')


def readme_script(readme: str, source: Path, venv: Path) -> str:
    """The README's three blocks as one bash script, with the changes the module docstring lists."""
    quick_start = section(readme, SECTIONS[0])
    first, *_ = bash_blocks(quick_start)
    lines = first.splitlines()
    assert lines[0].startswith("git clone <this repository> lesionseg && cd lesionseg"), lines[0]
    clone = lines[0].replace("<this repository>", shlex.quote(str(source)))
    # The installed environment, found up to date by make (its stamp newer than what it is made from).
    provided = [
        f"ln -s {shlex.quote(str(venv))} .venv && echo /.venv >> .git/info/exclude",
        "touch -d @0 pyproject.toml scripts/setup_venv.sh",
    ]
    repro = f'make repro SET="{local_archive_options(quick_start)}"'
    rest = [re.sub(r"^make repro\b(?!\s+SET)", repro, line) for line in lines[1:]]
    assert any(line.startswith(repro) for line in rest), "the quick start has no `make repro` line"
    later = [bash_blocks(section(readme, title))[0] for title in SECTIONS[1:]]
    return "\n".join(["set -euo pipefail", clone, *provided, *rest, *later]) + "\n"


def shell_env(clone: Path) -> dict:
    """A fresh shell's environment: no virtual environment, no dvc or lesionseg on PATH, a git identity
    (a README prerequisite), the project's own MLflow store, the clone's code for the lesionseg command."""
    drop = {"VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "PYTHONPATH", "PYTHONHOME"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join(
        d for d in env["PATH"].split(os.pathsep) if d and not any((Path(d) / tool).exists() for tool in TOOLS)
    )
    return {**env, **GIT_IDENTITY, "PYTHONPATH": str(clone)}


def snapshot(dest: Path) -> Path:
    """A repository whose HEAD is this checkout as it is now: HEAD plus its uncommitted and new files."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    changed = subprocess.run(
        ["git", "ls-files", "--modified", "--others", "--exclude-standard", "--deleted"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in dict.fromkeys(changed):
        target = dest / name
        if (REPO / name).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target)
        elif target.exists():
            target.unlink()
    env = {**os.environ, **GIT_IDENTITY}
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
    subprocess.run(
        ["git", "commit", "-q", "--allow-empty", "-m", "the checkout under test"], cwd=dest, check=True, env=env
    )
    return dest


def experiment_refs(project: Path) -> list[tuple[str, str]]:
    """(commit, ref) of each DVC experiment of ``project``'s git repository."""
    listing = ["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"]
    out = subprocess.run(listing, cwd=project, capture_output=True, text=True, check=True).stdout
    return [tuple(line.split(" ", 1)) for line in out.splitlines()]


def test_the_readme_script_is_the_readmes_blocks_with_only_the_data_and_schedule_changed():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    script = readme_script(readme, Path("/src"), Path("/venv"))
    assert "git clone /src lesionseg && cd lesionseg" in script
    assert f"-S download.source={MINI} -S data.expected_train=null" in script and SHORT in script
    assert "isic2016-dev" not in script and "../shared" not in script
    for title in SECTIONS:
        for block in bash_blocks(section(readme, title))[:1]:
            for line in block.splitlines()[1 if title == SECTIONS[0] else 0 :]:
                assert line in script or line.startswith("make repro"), line


@pytest.mark.slow  # the pipeline twice on isic2016-mini, 1 epoch a phase: a few minutes on 2 cores
@requires_shared
def test_the_readme_flow_runs_as_written_in_a_fresh_shell(tmp_path):
    venv = Path(sys.prefix)
    if not (venv / ".lesionseg-installed").is_file():
        pytest.skip(f"{venv} was not made by `make setup`: the clone could not use it as its .venv")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    source = snapshot(tmp_path / "source")
    script = readme_script(readme, source, venv)
    (tmp_path / "readme.sh").write_text(script)
    clone = tmp_path / "lesionseg"
    done = subprocess.run(
        ["bash", str(tmp_path / "readme.sh")],
        cwd=tmp_path,
        env=shell_env(clone),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"the README's flow failed (exit {done.returncode}):\n{script}\n---\n{out[-6000:]}"
    names = [ref.rsplit("/", 1)[-1] for _, ref in experiment_refs(clone)]
    assert names.count("baseline") == 1 and names.count("finetune-lr") == 1, names
    assert "baseline" in done.stdout and "finetune-lr" in done.stdout  # dvc exp show's rows
    assert re.search(r"finetune_all.*(better|worse|no detectable change)", done.stdout), done.stdout[-4000:]


def _baseline_ref(project: Path) -> str:
    found = [commit for commit, ref in experiment_refs(project) if ref.endswith("/baseline")]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow  # four dvc exp runs of a one-stage pipeline
def test_make_repro_replaces_its_baseline_and_keeps_it_when_the_run_fails(tmp_path):
    """scripts/repro.sh (make repro): one experiment `baseline` per commit, the newest; a failed run keeps the last."""
    project = tmp_path / "p"
    project.mkdir()
    env = {**os.environ, **GIT_IDENTITY, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def run(*cmd, check=True):
        done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert not check or done.returncode == 0, done.stdout + done.stderr
        return done

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    (project / "params.yaml").write_text("x: 1\n")
    fail_on_99 = "python -c \"import sys, yaml; sys.exit(yaml.safe_load(open('params.yaml'))['x'] == 99)\""
    (project / "dvc.yaml").write_text(
        f"stages:\n  s:\n    cmd: {fail_on_99} && echo ok > out.txt\n    params: [x]\n    outs: [out.txt]\n"
    )
    run("git", "add", "-A")
    run("git", "commit", "-qm", "pipeline")
    repro = str(REPO / "scripts" / "repro.sh")
    run(repro, "baseline", "-S", "x=2")
    first = _baseline_ref(project)
    assert "replaces the earlier baseline" in run(repro, "baseline", "-S", "x=3").stdout
    second = _baseline_ref(project)
    assert second != first
    failed = run(repro, "baseline", "-S", "x=99", check=False)
    assert failed.returncode != 0 and "still the earlier one" in failed.stderr
    assert _baseline_ref(project) == second
