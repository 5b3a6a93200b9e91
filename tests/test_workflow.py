"""The GitHub workflow (.github/workflows/ci.yml), checked offline: GitHub itself cannot be reached from here.

actionlint and zizmor check it in `make lint`; these tests check what they do not know about: that every
`run:` step calls a make target or a script of this repository that exists, that .ci/run shares those
targets, and the house rules (pinned actions, least privilege, timeouts, artifacts on failure).
"""

import os
import re
import shlex

import yaml

from tests.helpers import REPO

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


def load_workflow() -> dict:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def make_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", line)
        if match:
            targets.add(match.group(1))
    return targets


def commands(script: str) -> list[list[str]]:
    """The commands of a run: block or shell script: one per line, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", script)
    lines = [line.strip() for line in joined.splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line and not line.startswith("#")]


def steps():
    for name, job in load_workflow()["jobs"].items():
        for step in job["steps"]:
            yield name, step


def test_every_run_step_calls_a_make_target_or_a_repository_command():
    targets, seen = make_targets(), []
    for job, step in steps():
        if "run" not in step:
            continue
        for words in commands(step["run"]):
            if words[0] == "make":
                called = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
                assert called and set(called) <= targets, f"{job}: {words} calls no Makefile target"
                seen += called
            else:
                path = REPO / words[0]
                assert path.is_file() and os.access(path, os.X_OK), f"{job}: {words[0]} is not a repository command"
                assert words[0].startswith(("scripts/", ".ci/")), words
    assert {"test", "ci-fixture", "ci-pipeline", "ci-base", "ci-report"} <= set(seen)


def test_ci_run_uses_the_same_make_targets_as_the_workflow():
    workflow = {w for _, s in steps() if "run" in s for c in commands(s["run"]) if c[0] == "make" for w in c[1:]}
    local = set(re.findall(r"\bmake (\S+)", (REPO / ".ci" / "run").read_text()))
    shared = {"test", "ci-pipeline", "ci-report"}
    assert shared <= workflow and shared <= local, (workflow, local)


def test_least_privilege_pinned_actions_timeouts_and_artifacts():
    workflow = load_workflow()
    assert workflow["permissions"] == {"contents": "read"}
    assert set(workflow["on"]) == {"push", "pull_request"} and workflow["on"]["push"]["branches"] == ["main"]
    writers = {name for name, job in workflow["jobs"].items() if "write" in job.get("permissions", {}).values()}
    assert writers == {"comment"}
    assert workflow["jobs"]["comment"]["permissions"] == {"contents": "read", "pull-requests": "write"}
    # A fork's pull request gets no write token: the comment job runs for this repository's branches only.
    assert "github.event.pull_request.head.repo.full_name == github.repository" in workflow["jobs"]["comment"]["if"]
    for name, job in workflow["jobs"].items():
        assert 0 < job["timeout-minutes"] <= 60, name
    for job, step in steps():
        if "uses" in step:
            assert SHA_PIN.match(step["uses"]), f"{job}: {step['uses']} is not pinned to a commit"
            if step["uses"].startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, job
    assert "secrets." not in WORKFLOW.read_text()  # nothing a fork would have to configure
    upload = [s for _, s in steps() if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert len(upload) == 1 and upload[0]["if"] == "always()"
    kept = upload[0]["with"]["path"].split()
    assert {"reports/", "build/ci/logs/", "build/ci/report/"} <= set(kept)
