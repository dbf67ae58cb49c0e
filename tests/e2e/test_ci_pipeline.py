"""The example CI pipelines (examples/ci/) run against a real local cluster: a pull request
plans a new worker, the merge applies the saved plan of that commit, the next pull request
plans nothing; a plan that the cluster moved past is refused as stale.

The steps are read from the pipeline files themselves and run in order as bash scripts, the
way a CI runner would: each job in a fresh directory (a clone of the repository when the job
checks it out), with the artifacts of the jobs before it. The keeper reaches the queen through
$RBEE_QUEEN_URL with a key, as from a CI runner on another machine: a branch's pipeline runs as
a pull (merge) request, which plans with the plan key; main's with the admin key.
Steps that only talk to GitHub or GitLab (installing rbee, the plan comment) are not run.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.cli.test_ci_examples import GITHUB, GITLAB
from tests.fixtures.cluster import LocalCluster, kill_strays, new_cluster

pytestmark = pytest.mark.slow

WORKER = "worker.local.gemma3-270m[0]"


@dataclass
class Step:
    name: str
    script: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Job:
    """One job as the test runs it: its rbee steps, and what it takes from the jobs before."""

    name: str
    env: dict[str, str]
    steps: list[Step] = field(default_factory=list)
    checkout: bool = False
    downloads: list[str] = field(default_factory=list)
    uploads: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Pipeline:
    """An example pipeline: how to read its jobs, and which run for a review or a merge."""

    name: str
    read: Callable[[dict[str, str], str, bool], dict[str, Job]]
    plan: str
    apply: str


_EXPRESSION = re.compile(r"\$\{\{\s*(.+?)\s*\}\}")
# `NAME == 'VALUE' && THEN || ELSE`, GitHub's conditional.
_CHOICE = re.compile(r"(\S+) == '([^']*)' && (\S+) \|\| (\S+)")


def _expand(value: object, context: dict[str, str]) -> str:
    """A GitHub value with its `${{ … }}` replaced from `context`: a name, or a conditional
    between two (KeyError on any other)."""

    def evaluate(match: re.Match[str]) -> str:
        choice = _CHOICE.fullmatch(match.group(1))
        if choice is None:
            return context[match.group(1)]
        name, value, then, otherwise = choice.groups()
        return context[then] if context[name] == value else context[otherwise]

    return _EXPRESSION.sub(evaluate, str(value))


def _github_jobs(secrets: dict[str, str], sha: str, review: bool) -> dict[str, Job]:
    """The workflow's jobs at commit `sha`, on a pull request (`review`) or a push: their steps
    named `rbee …`, checkout and the artifacts they move; `secrets` are the repository's."""
    workflow = YAML(typ="safe").load(GITHUB)
    context = {
        "github.sha": sha,
        "github.event_name": "pull_request" if review else "push",
        **{f"secrets.{k}": v for k, v in secrets.items()},
    }
    jobs = {}
    for name, body in workflow["jobs"].items():
        env = {**workflow.get("env", {}), **body.get("env", {})}
        job = Job(name, {key: _expand(value, context) for key, value in env.items()})
        for step in body["steps"]:
            uses, given = step.get("uses", ""), step.get("with", {})
            if uses.startswith("actions/checkout@"):
                job.checkout = True
            elif uses.startswith("actions/upload-artifact@"):
                job.uploads[_expand(given["name"], context)] = given["path"].split()
            elif uses.startswith("actions/download-artifact@"):
                job.downloads.append(_expand(given["name"], context))
            elif step.get("name", "").startswith("rbee "):
                env = {key: _expand(value, context) for key, value in step.get("env", {}).items()}
                job.steps.append(Step(step["name"], step["run"], env))
        jobs[name] = job
    return jobs


def _gitlab_jobs(secrets: dict[str, str], sha: str, review: bool) -> dict[str, Job]:
    """The pipeline's jobs, for a merge request (`review`) or the default branch: their
    `script:` (GitLab runs it as one bash script), a checkout (GitLab always clones) and the
    artifacts of the jobs they need; `secrets` are the project's CI/CD variables, the admin
    key protected (a merge request never sees it). Artifacts go by job name: `sha` plays no
    part."""
    pipeline = YAML(typ="safe").load(GITLAB)
    variables = {key: str(value) for key, value in pipeline.get("variables", {}).items()}
    if review:
        secrets = {k: v for k, v in secrets.items() if k != "RBEE_API_KEY"}
    source = {"CI_PIPELINE_SOURCE": "merge_request_event" if review else "push"}
    return {
        name: Job(
            name,
            {**variables, **secrets, **source},
            steps=[Step(name, "\n".join(body["script"]))],
            checkout=True,
            downloads=list(body.get("needs", [])),
            uploads={name: body.get("artifacts", {}).get("paths", [])},
        )
        for name, body in pipeline.items()
        if isinstance(body, dict) and "script" in body
    }


PIPELINES = [
    Pipeline("github", _github_jobs, plan="plan", apply="apply"),
    Pipeline("gitlab", _gitlab_jobs, plan="rbee:plan", apply="rbee:apply"),
]


@dataclass
class JobRun:
    job: Job
    workdir: Path
    results: list[subprocess.CompletedProcess[str]]

    @property
    def ok(self) -> bool:
        return len(self.results) == len(self.job.steps) and all(
            result.returncode == 0 for result in self.results
        )

    def log(self) -> str:
        """Every step's output, for an assertion's message."""
        return "\n".join(
            f"--- {step.name}: exit {result.returncode}\n{result.stdout}{result.stderr}"
            for step, result in zip(self.job.steps, self.results, strict=False)
        )

    def outputs(self) -> dict[str, str]:
        """What the steps wrote to $GITHUB_OUTPUT."""
        lines = (self.workdir.parent / f"{self.workdir.name}.output").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)

    def file(self, name: str) -> str:
        return (self.workdir / name).read_text()


@dataclass
class Runner:
    """A CI runner in miniature, for one repository and one pipeline."""

    root: Path
    repo: Path
    pipeline: Pipeline
    secrets: dict[str, str]
    env: dict[str, str]
    artifacts: dict[str, Path] = field(default_factory=dict)
    jobs_run: int = 0

    def run(self, job_name: str, branch: str) -> JobRun:
        """Run one job on the tip of `branch`; its steps stop at the first failure."""
        sha = _git(self.repo, "rev-parse", branch)
        job = self.pipeline.read(self.secrets, sha, branch != "main")[job_name]
        self.jobs_run += 1
        workdir = self.root / f"{self.jobs_run}-{job_name.replace(':', '-')}"
        if job.checkout:
            _git(self.root, "clone", "--quiet", "--branch", branch, str(self.repo), str(workdir))
        else:
            workdir.mkdir()
        for name in job.downloads:
            shutil.copytree(self.artifacts[name], workdir, dirs_exist_ok=True)
        output = workdir.parent / f"{workdir.name}.output"
        output.touch()
        env = {
            **self.env,
            **job.env,
            "CI": "true",
            "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(workdir.parent / f"{workdir.name}.summary"),
        }
        results = []
        for step in job.steps:
            result = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step.script],
                cwd=workdir,
                env={**env, **step.env},
                capture_output=True,
                text=True,
                timeout=240,
            )
            results.append(result)
            if result.returncode != 0:
                break
        run = JobRun(job, workdir, results)
        if run.ok:
            for name, paths in job.uploads.items():
                self.artifacts[name] = self.root / "artifacts" / name
                self.artifacts[name].mkdir(parents=True, exist_ok=True)
                for path in paths:
                    shutil.copy(workdir / path, self.artifacts[name])
        return run


@dataclass
class Queen:
    """The running cluster the pipelines manage, and the admin and plan keys they were given."""

    cluster: LocalCluster
    key: str
    plan_key: str

    def reset(self) -> None:
        """Back to no worker, applied straight from the operator's YAML."""
        self.cluster.write(replicas=0)
        self.cluster.rbee("apply", "--auto-approve")

    def status(self, runner: Runner) -> dict[str, Any]:
        """`rbee status --json` as a CI runner sees it."""
        result = subprocess.run(
            ["rbee", "status", "--json", "-f", str(runner.repo / "cluster.yaml")],
            env={**runner.env, **runner.secrets},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        status: dict[str, Any] = json.loads(result.stdout)
        return status

    def worker_ids(self, runner: Runner) -> list[str]:
        """The live workers, as `rbee status --json` shows them to a CI runner."""
        return sorted(worker["worker_id"] for worker in self.status(runner)["workers"])


@pytest.fixture(scope="module")
def queen(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[Queen]:
    # Self-heal off: only the applies under test change the cluster.
    cluster = new_cluster(tmp_path_factory.mktemp("home"), gguf, self_heal="false")
    cluster.write(replicas=0)
    cluster.rbee("apply", "--auto-approve")
    key = cluster.rbee("key", "create", "ci", "--scope", "admin").stdout.strip()
    # From now on every route needs a key: the operator's own calls carry it too.
    cluster.env["RBEE_API_KEY"] = key
    plan_key = cluster.rbee("key", "create", "ci-plan", "--scope", "plan").stdout.strip()
    yield Queen(cluster, key, plan_key)
    cluster.rbee("down", check=False, timeout=60)
    kill_strays(cluster)


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=dev", "-c", "user.email=dev@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def _commit(repo: Path, message: str) -> None:
    _git(repo, "add", "--all")
    _git(repo, "commit", "--quiet", "-m", message)


def _runner(tmp_path: Path, queen: Queen, pipeline: Pipeline) -> tuple[Runner, LocalCluster]:
    """A repository whose cluster.yaml declares the running cluster with no worker, a CI
    runner for it with the queen's URL and the keys as the CI's secrets, and the cluster as
    the repository's YAML declares it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "--quiet", "--initial-branch", "main")
    declared = dataclasses.replace(queen.cluster, config=repo / "cluster.yaml")
    declared.write(replicas=0)
    _commit(repo, "the cluster")
    (tmp_path / "ci").mkdir()
    secrets = {
        "RBEE_QUEEN_URL": queen.cluster.queen_url,
        "RBEE_API_KEY": queen.key,
        "RBEE_PLAN_KEY": queen.plan_key,
    }
    # The runner's own HOME and PATH: the keeper under test, no rbee state, no key.
    env = {k: v for k, v in queen.cluster.env.items() if not k.startswith("RBEE_")}
    env["HOME"] = str(tmp_path / "runner-home")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return Runner(tmp_path / "ci", repo, pipeline, secrets, env), declared


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda pipeline: pipeline.name)
def test_pull_request_plans_the_merge_applies_and_the_next_plan_is_clean(
    tmp_path: Path, queen: Queen, pipeline: Pipeline
) -> None:
    queen.reset()
    ci, declared = _runner(tmp_path, queen, pipeline)

    # Pull request 1 adds a worker: its plan shows it, and nothing changes yet.
    _git(ci.repo, "checkout", "--quiet", "-b", "add-a-worker")
    declared.write(replicas=1)
    _commit(ci.repo, "one worker")
    review = ci.run(pipeline.plan, "add-a-worker")
    assert review.ok, review.log()
    assert queen.key not in review.job.env.values()  # it planned with the plan key
    assert "**Plan:** 1 to add, 0 to change, 0 to destroy." in review.file("plan.md")
    assert f"`{WORKER}`" in review.file("plan.md")
    if pipeline.name == "github":
        assert review.outputs() == {"changes": "true"}  # exit 2, and the apply job would run
    assert queen.worker_ids(ci) == []

    # The merge plans that commit again and applies exactly the saved plan.
    _git(ci.repo, "checkout", "--quiet", "main")
    _git(ci.repo, "merge", "--quiet", "--no-ff", "-m", "merge add-a-worker", "add-a-worker")
    plan = ci.run(pipeline.plan, "main")
    assert plan.ok, plan.log()
    apply = ci.run(pipeline.apply, "main")
    assert apply.ok, apply.log()
    summary = json.loads(apply.results[-1].stdout.splitlines()[-1])
    assert summary["event"] == "summary" and summary["ok"]
    assert summary["done"] == [WORKER]
    assert queen.worker_ids(ci) == ["local.gemma3-270m.0"]
    # The apply of a saved plan records the commit it was planned from.
    applied = queen.status(ci)["applied"]["source"]
    assert applied["commit"] == _git(ci.repo, "rev-parse", "HEAD") and not applied["dirty"]

    # Pull request 2 leaves cluster.yaml alone: its plan is clean.
    _git(ci.repo, "checkout", "--quiet", "-b", "notes")
    (ci.repo / "NOTES.md").write_text("why one worker\n")
    _commit(ci.repo, "notes")
    review = ci.run(pipeline.plan, "notes")
    assert review.ok, review.log()
    assert "**No changes.**" in review.file("plan.md")
    if pipeline.name == "github":
        assert review.outputs() == {"changes": "false"}  # exit 0: no apply job


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda pipeline: pipeline.name)
def test_apply_of_a_plan_the_cluster_moved_past_fails_as_stale(
    tmp_path: Path, queen: Queen, pipeline: Pipeline
) -> None:
    queen.reset()
    ci, declared = _runner(tmp_path, queen, pipeline)
    declared.write(replicas=1)
    _commit(ci.repo, "one worker")
    plan = ci.run(pipeline.plan, "main")
    assert plan.ok, plan.log()

    # Before anyone approves, another apply gets there first.
    queen.cluster.write(replicas=1)
    queen.cluster.rbee("apply", "--auto-approve")

    apply = ci.run(pipeline.apply, "main")
    assert not apply.ok
    assert apply.results[-1].returncode == 1
    assert "the plan is stale" in apply.results[-1].stderr, apply.log()
    assert "Traceback" not in apply.results[-1].stderr
    assert queen.worker_ids(ci) == ["local.gemma3-270m.0"]
