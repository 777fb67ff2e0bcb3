"""Checks that a release is ready: one version, its changelog entry, the tag.

Usage::

    python .ci/check_release.py                  # on any commit
    python .ci/check_release.py --tag v0.3.0     # on the tag being released
    python .ci/check_release.py --tag v0.3.0 --notes NOTES.md
    python .ci/check_release.py --self-test

The version lives in one place, ``pyproject.toml``; ``multifd_zero.__version__``
reads it from the installed metadata. On any commit, the changelog's newest
entry must be that version, either dated (``## 0.3.0 — 2026-12-01``) or still
open (``## Unreleased (0.3.0)``). A tag must be ``v`` plus the version, and its
entry must be dated and not empty: the release workflow
(``.github/workflows/release.yml``) runs this before it builds anything, and
``--notes`` writes the entry's text for the GitHub release.

It also checks that the workflow builds with the same cibuildwheel that
``.ci/run`` pins, so that what CI proves here is what the workflow runs.

Only the standard library is used; Python 3.11 or newer (tomllib).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent

_VERSION = r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?"
_DATED = re.compile(rf"^## (?P<version>{_VERSION}) — (?P<date>\d{{4}}-\d{{2}}-\d{{2}})$")
_OPEN = re.compile(rf"^## Unreleased \((?P<version>{_VERSION})\)$")


class ReleaseError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    version: str
    date: str | None  # None: not released yet
    body: str


def project_version(pyproject: Path) -> str:
    with pyproject.open("rb") as f:
        data = tomllib.load(f)
    version = data.get("project", {}).get("version")
    if not isinstance(version, str) or not re.fullmatch(_VERSION, version):
        raise ReleaseError(f"{pyproject}: [project] version {version!r} is not X.Y.Z")
    if "version" in data["project"].get("dynamic", []):
        raise ReleaseError(f"{pyproject}: the version must be static, in one place")
    return version


def newest_entry(changelog: Path) -> Entry:
    """The first ``## `` heading of the changelog and the text under it."""
    lines = changelog.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    if not starts:
        raise ReleaseError(f"{changelog}: no '## ' entry")
    first = starts[0]
    end = starts[1] if len(starts) > 1 else len(lines)
    heading = lines[first]
    body = "\n".join(lines[first + 1 : end]).strip()
    if m := _DATED.match(heading):
        return Entry(m["version"], m["date"], body)
    if m := _OPEN.match(heading):
        return Entry(m["version"], None, body)
    raise ReleaseError(
        f"{changelog}: the newest entry {heading!r} is neither '## X.Y.Z — YYYY-MM-DD' "
        "nor '## Unreleased (X.Y.Z)'"
    )


def pinned_cibuildwheel(ci_run: Path, workflow: Path) -> str:
    pin = re.search(r"\bcibuildwheel==([^\s)]+)", ci_run.read_text(encoding="utf-8"))
    uses = re.findall(r"\bcibuildwheel==([^\s)]+)", workflow.read_text(encoding="utf-8"))
    if pin is None:
        raise ReleaseError(f"{ci_run}: no cibuildwheel==X pin")
    if not uses:
        raise ReleaseError(f"{workflow}: no 'pip install cibuildwheel==X'")
    if any(u != pin[1] for u in uses):
        raise ReleaseError(
            f"{workflow} uses cibuildwheel {', '.join(sorted(set(uses)))} but {ci_run} "
            f"pins {pin[1]}: CI here would prove a different build"
        )
    return pin[1]


def check(root: Path, tag: str | None) -> Entry:
    version = project_version(root / "pyproject.toml")
    entry = newest_entry(root / "CHANGELOG.md")
    if entry.version != version:
        raise ReleaseError(
            f"CHANGELOG.md's newest entry is {entry.version}, pyproject.toml says {version}"
        )
    if not entry.body:
        raise ReleaseError(f"CHANGELOG.md's entry for {version} is empty")
    if tag is not None:
        if tag != f"v{version}":
            raise ReleaseError(f"tag {tag!r} does not name the version: expected 'v{version}'")
        if entry.date is None:
            raise ReleaseError(
                f"CHANGELOG.md's entry for {version} is still 'Unreleased': date it "
                f"('## {version} — YYYY-MM-DD') before tagging"
            )
    return entry


def self_test() -> None:
    """The checker on small made-up projects: what it must accept and refuse."""
    good_pyproject = '[project]\nname = "x"\nversion = "1.2.0"\n'
    dated = (
        "# Changelog\n\n## 1.2.0 — 2026-12-01\n\n- a change\n\n## 1.1.0 — 2026-11-01\n\n- old\n"
    )
    open_entry = "# Changelog\n\n## Unreleased (1.2.0)\n\n- a change\n"
    cases: list[tuple[str, str, str, str | None, str | None]] = [
        # (what, pyproject, changelog, tag, the error it must contain or None)
        ("a dated entry, its tag", good_pyproject, dated, "v1.2.0", None),
        ("a dated entry, no tag", good_pyproject, dated, None, None),
        ("an open entry, no tag", good_pyproject, open_entry, None, None),
        ("an open entry, tagged", good_pyproject, open_entry, "v1.2.0", "still 'Unreleased'"),
        ("the wrong tag", good_pyproject, dated, "v1.2.1", "does not name the version"),
        ("a tag without v", good_pyproject, dated, "1.2.0", "does not name the version"),
        ("no entry for the version", good_pyproject.replace("1.2.0", "1.3.0"), dated, None,
         "newest entry is 1.2.0"),
        ("an empty entry", good_pyproject, "## 1.2.0 — 2026-12-01\n\n## 1.1.0 — 2026-11-01\n- o\n",
         None, "is empty"),
        ("a heading of another shape", good_pyproject, "## v1.2.0 (soon)\n- a\n", None,
         "neither"),
        ("a dynamic version", '[project]\nname = "x"\nversion = "1.2.0"\ndynamic = ["version"]\n',
         dated, None, "must be static"),
    ]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for what, pyproject, changelog, tag, expected in cases:
            (root / "pyproject.toml").write_text(pyproject, encoding="utf-8")
            (root / "CHANGELOG.md").write_text(changelog, encoding="utf-8")
            try:
                check(root, tag)
                error = None
            except ReleaseError as exc:
                error = str(exc)
            ok = error is None if expected is None else error is not None and expected in error
            failed += not ok
            print(f"  {'ok  ' if ok else 'FAIL'} {what}: {error or 'accepted'}")
    if failed:
        raise ReleaseError(f"self-test: {failed} of {len(cases)} cases wrong")
    print(f"self-test: all {len(cases)} cases as expected")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", help="the git tag being released, e.g. v0.3.0")
    parser.add_argument("--notes", type=Path, help="write the version's changelog entry here")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this one)")
    parser.add_argument("--self-test", action="store_true", help="test the checker itself")
    args = parser.parse_args(argv)
    try:
        if args.self_test:
            self_test()
            return 0
        entry = check(args.root, args.tag)
        cibw = pinned_cibuildwheel(
            args.root / ".ci" / "run", args.root / ".github" / "workflows" / "release.yml"
        )
        state = f"dated {entry.date}" if entry.date else "not released yet"
        print(f"version {entry.version} ({state}); workflow and .ci/run build with "
              f"cibuildwheel {cibw}" + (f"; tag {args.tag} matches" if args.tag else ""))
        if args.notes is not None:
            args.notes.write_text(entry.body + "\n", encoding="utf-8")
            print(f"wrote the release notes to {args.notes}")
    except (ReleaseError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"check_release: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
