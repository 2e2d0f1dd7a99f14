"""Mutation testing of the trust boundary with cosmic-ray: ``make mutants`` and its CI sample.

Runs in: developer machine and CI (never imported by cipherloop).

Why cosmic-ray: it mutates the source files in place and runs a test command
per mutant, so a mutant reaches the enclave *subprocess* (``python -m
cipherloop.enclave``) the tests start. mutmut 3 instead imports a trampolined
copy from ``mutants/`` through ``sys.path`` and picks the tests per function
from hits recorded in the test process; code that runs only in the enclave
process records no hits there and its mutants come out "no tests".

The working tree is never touched: each worker mutates its own copy of the
tracked (and untracked, not ignored) files, imported first through
``PYTHONPATH`` -- which the enclave subprocess inherits.

Usage::

    python scripts/mutants.py                 # every mutant of every group (make mutants)
    python scripts/mutants.py --sample 20     # 20 random mutants (CI; scripts/mutants-sample.sh)
    python scripts/mutants.py --group policy --jobs 1

Groups (files, the functions to mutate, the tests that must kill them) are in
``mutation/groups.toml``; surviving mutants that are equivalent to the original
are listed, one line and one reason each, in ``mutation/equivalent.txt``. The
run fails when a mutant survives that is not on that list, when a group's tests
fail without any mutant, or when a test command collects no tests (pytest exit
5, which cosmic-ray would otherwise count as a kill).
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "mutation" / "groups.toml"
EQUIVALENT = ROOT / "mutation" / "equivalent.txt"
NO_TESTS_EXIT = 5


@dataclass(frozen=True)
class Group:
    """Modules to mutate (optionally only some functions) and the tests that guard them."""

    name: str
    modules: tuple[str, ...]
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()
    timeout: float = 120.0


@dataclass(frozen=True)
class Mutant:
    """One mutation, named stably across runs by file, function and the changed line."""

    group: str
    job_id: str
    module: str
    function: str
    line: int
    operator: str
    before: str
    after: str

    @property
    def key(self) -> str:
        return f"{self.module}::{self.function} | {self.before} => {self.after}"


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, survived, incompetent, skipped
    output: str = ""


@dataclass
class Settings:
    groups: list[Group]
    exclude_operators: list[str]
    equivalent: dict[str, str] = field(default_factory=dict)


def load_settings(config: Path = CONFIG, equivalent: Path = EQUIVALENT) -> Settings:
    doc = tomllib.loads(config.read_text())
    groups = [Group(name=g["name"], modules=tuple(g["modules"]), tests=tuple(g["tests"]),
                    functions=tuple(g.get("functions", ())), timeout=float(g.get("timeout", 120)))
              for g in doc["group"]]
    allow: dict[str, str] = {}
    for raw in equivalent.read_text().splitlines() if equivalent.exists() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, reason = line.rpartition(" # ")
        if not sep or not reason.strip():
            raise SystemExit(f"{equivalent.name}: every entry needs ' # reason': {line!r}")
        allow[key.strip()] = reason.strip()
    check_split(groups)
    return Settings(groups, list(doc.get("exclude_operators", [])), allow)


def check_split(groups: list[Group], root: Path = ROOT) -> None:
    """A file split over several groups (each with its own tests) must be split whole:
    a top-level function no group names would never be mutated, silently."""
    named: dict[str, list[Group]] = {}
    for g in groups:
        for m in g.modules:
            named.setdefault(m, []).append(g)
    for module, owners in named.items():
        if len(owners) < 2 or any(not g.functions for g in owners):
            continue
        tops = {"<module>"} | {name for name, _, _ in _function_spans(root / module) if "." not in name}
        left = sorted(t for t in tops if not any(_wanted(t, g) for g in owners))
        if left:
            raise SystemExit(f"{module} is split over groups {[g.name for g in owners]}, "
                             f"but none names {left}: add them to one group's functions")


def copy_tree(dest: Path) -> None:
    """The files git would commit (tracked and untracked-not-ignored), as they are now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _function_spans(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, first line, last line) of every function, innermost last."""
    spans: list[tuple[str, int, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                spans.append((f"{prefix}{child.name}", child.lineno, child.end_lineno or child.lineno))
                walk(child, f"{prefix}{child.name}.")

    walk(ast.parse(path.read_text()), "")
    return spans


Span = tuple[int, int, int, int]


def _annotation_spans(path: Path) -> list[Span]:
    """Where the annotations are: never evaluated (``from __future__ import annotations``),
    so a mutant inside one is equivalent by construction and is not run."""
    spans: list[Span] = []
    for node in ast.walk(ast.parse(path.read_text())):
        found: list[ast.expr | None] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            a = node.args
            found += [x.annotation for x in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
                      if x is not None]
            found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        spans += [(e.lineno, e.col_offset, e.end_lineno or e.lineno, e.end_col_offset or 0)
                  for e in found if e is not None]
    return spans


def _in_annotation(spans: list[Span], pos: tuple[int, int]) -> bool:
    return any((s[0], s[1]) <= pos < (s[2], s[3]) for s in spans)


def _function_at(spans: list[tuple[str, int, int]], line: int) -> str:
    inside = [s for s in spans if s[1] <= line <= s[2]]
    return max(inside, key=lambda s: s[1])[0] if inside else "<module>"


def _wanted(function: str, group: Group) -> bool:
    return not group.functions or any(function == f or function.startswith(f + ".")
                                      for f in group.functions)


def _cosmic(work: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", *args], cwd=work, check=True,
                   env=_env(work), stdout=subprocess.DEVNULL)


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(work) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _test_command(group: Group, marker: Path) -> str:
    pytest = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {' '.join(group.tests)}"
    # cosmic-ray counts every non-zero exit as a kill; "no tests collected" must not be one.
    return (f"bash -c '{pytest}; rc=$?; if [ $rc -eq {NO_TESTS_EXIT} ]; then touch {marker}; fi; "
            f"exit $rc'")


def write_config(group: Group, work: Path) -> Path:
    """The group's cosmic-ray config in ``work`` (its test command names that worker's marker)."""
    cfg = work / f"cosmic-ray.{group.name}.toml"
    marker = work / f"no-tests.{group.name}"
    modules = ", ".join(f'"{m}"' for m in group.modules)
    cfg.write_text(
        "[cosmic-ray]\n"
        f"module-path = [{modules}]\n"
        f"timeout = {group.timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {_toml_str(_test_command(group, marker))}\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n")
    return cfg


def share_session(group: Group, source: Path, work: Path) -> None:
    """Give another worker the same session (mutants named by relative paths) and its config."""
    write_config(group, work)
    name = f"session.{group.name}.sqlite"
    shutil.copy2(source / name, work / name)


def prepare(group: Group, work: Path, exclude: list[str]) -> list[Mutant]:
    """Write the group's cosmic-ray config and session into ``work``; return its mutants."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    cfg = write_config(group, work)
    session = work / f"session.{group.name}.sqlite"
    _cosmic(work, "init", cfg.name, session.name)
    spans = {m: _function_spans(work / m) for m in group.modules}
    annotations = {m: _annotation_spans(work / m) for m in group.modules}
    lines = {m: (work / m).read_text().splitlines() for m in group.modules}
    drop = [re.compile(p) for p in exclude]
    kept: list[Mutant] = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        skip: list[str] = []
        for item in db.work_items:
            spec = item.mutations[0]
            module = str(spec.module_path)
            line = spec.start_pos[0]
            function = _function_at(spans[module], line)
            if (not _wanted(function, group) or any(p.search(spec.operator_name) for p in drop)
                    or _in_annotation(annotations[module], tuple(spec.start_pos))):
                skip.append(item.job_id)
                continue
            kept.append(Mutant(group.name, item.job_id, module, function, line, spec.operator_name,
                               lines[module][line - 1].strip(), ""))
        if skip:
            db.set_multiple_results(skip, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    return kept


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def restrict(work: Path, group: Group, keep: set[str]) -> None:
    """Mark every pending mutant of the group not in ``keep`` as skipped (sampling)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(work / f"session.{group.name}.sqlite"), WorkDB.Mode.open) as db:
        drop = [i.job_id for i in db.pending_work_items if i.job_id not in keep]
        if drop:
            db.set_multiple_results(drop, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))


def baseline(group: Group, work: Path) -> None:
    """The group's tests must pass on unmutated code, or every mutant would look killed."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *group.tests]
    done = subprocess.run(cmd, cwd=work, env=_env(work), capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise SystemExit(f"group {group.name}: its tests fail without any mutant "
                         f"(exit {done.returncode}):\n{tail}")


def execute(group: Group, work: Path, mutants: list[Mutant]) -> list[Outcome]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    if mutants:
        _cosmic(work, "exec", f"cosmic-ray.{group.name}.toml", f"session.{group.name}.sqlite")
    if (work / f"no-tests.{group.name}").exists():
        raise SystemExit(f"group {group.name}: a test command collected no tests (pytest exit 5)")
    by_id = {m.job_id: m for m in mutants}
    out: list[Outcome] = []
    with use_db(str(work / f"session.{group.name}.sqlite"), WorkDB.Mode.open) as db:
        for job_id, result in db.results:
            m = by_id.get(job_id)
            if m is None or result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            after = _mutated_line(result.diff or "")
            m = Mutant(m.group, m.job_id, m.module, m.function, m.line, m.operator, m.before, after)
            if result.worker_outcome != WorkerOutcome.NORMAL:
                status = "incompetent"
            elif result.test_outcome == TestOutcome.KILLED:
                status = "killed"
            elif result.test_outcome == TestOutcome.SURVIVED:
                status = "survived"
            else:
                status = "incompetent"
            out.append(Outcome(m, status, result.output or ""))
    return out


def _mutated_line(diff: str) -> str:
    plus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return " / ".join(plus)


def run_worker(groups: list[Group], share: list[Mutant], root: Path, index: int) -> list[Outcome]:
    """Run this worker's share of every group's mutants, group by group, in its own copy."""
    work = root / f"w{index}"
    results: list[Outcome] = []
    for group in groups:
        mutants = [m for m in share if m.group == group.name]
        restrict(work, group, {m.job_id for m in mutants})
        if not mutants:
            continue
        print(f"[{group.name}] baseline, then {len(mutants)} mutants "
              f"({', '.join(group.tests)})", flush=True)
        baseline(group, work)
        results += execute(group, work, mutants)
        survived = sum(r.status == "survived" for r in results if r.mutant.group == group.name)
        print(f"[{group.name}] done: {survived} survived", flush=True)
    return results


def report(outcomes: list[Outcome], settings: Settings) -> int:
    """Print scores per module and every survivor; return the exit status."""
    per: dict[str, Counter[str]] = {}
    real: list[Outcome] = []
    for o in outcomes:
        c = per.setdefault(o.mutant.module, Counter())
        if o.status == "survived" and o.mutant.key in settings.equivalent:
            c["equivalent"] += 1
        else:
            c[o.status] += 1
            if o.status == "survived":
                real.append(o)
    print("\nmodule                                   mutants  killed  equivalent  survived  "
          "incompetent  score")
    total: Counter[str] = Counter()
    for module, c in sorted(per.items()):
        total += c
        print(_row(module, c))
    print(_row("TOTAL", total))
    for o in real:
        m = o.mutant
        print(f"\nSURVIVED {m.key}\n    line {m.line}, {m.operator}")
    if real:
        print(f"\n{len(real)} mutant(s) survived that are not in {EQUIVALENT.relative_to(ROOT)}: "
              "add a test that kills each, or list it there with a one-line reason if it is "
              "equivalent to the original.")
        return 1
    return 0


def _row(name: str, c: Counter[str]) -> str:
    n = sum(c.values())
    judged = c["killed"] + c["survived"]
    score = f"{100 * c['killed'] / judged:5.1f}%" if judged else "   --"
    return (f"{name:<40} {n:>7} {c['killed']:>7} {c['equivalent']:>11} {c['survived']:>9} "
            f"{c['incompetent']:>12}  {score}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=None, help="run only N random mutants")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sample (default: random)")
    parser.add_argument("--group", action="append", default=None, help="only these groups")
    parser.add_argument("--jobs", type=int, default=2, help="parallel workers (each has its own copy)")
    parser.add_argument("--match", default=None,
                        help="only mutants whose 'path::function | line => ' matches this regex "
                             "(what a mutant changes the line to is known only once it has run)")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    args = parser.parse_args(argv)
    settings = load_settings()
    groups = [g for g in settings.groups if args.group is None or g.name in args.group]
    if not groups:
        parser.error(f"no such group; groups: {[g.name for g in settings.groups]}")
    jobs = max(1, args.jobs)
    root = Path(tempfile.mkdtemp(prefix="cipherloop-mutants-"))
    try:
        for i in range(jobs):
            copy_tree(root / f"w{i}")
        prepared: dict[str, list[Mutant]] = {}
        for g in groups:
            prepared[g.name] = prepare(g, root / "w0", settings.exclude_operators)
            for i in range(1, jobs):
                share_session(g, root / "w0", root / f"w{i}")
        everyone = [m for g in groups for m in prepared[g.name]]
        if args.match is not None:
            pattern = re.compile(args.match)
            everyone = [m for m in everyone if pattern.search(m.key)]
        if args.sample is not None:
            seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
            picked = random.Random(seed).sample(everyone, min(args.sample, len(everyone)))
            print(f"sample of {len(picked)} of {len(everyone)} mutants (--seed {seed} repeats it)")
            everyone = sorted(picked, key=lambda m: (m.group, m.module, m.line))
        else:
            print(f"{len(everyone)} mutants in {len(groups)} groups, {jobs} workers")
        # Every worker takes every jobs-th mutant of each group: a large group is split, not queued.
        shares = [everyone[i::jobs] for i in range(jobs)]
        with ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(run_worker, groups, share, root, i)
                       for i, share in enumerate(shares)]
            outcomes = [o for f in futures for o in f.result()]
        return report(outcomes, settings)
    finally:
        if args.keep:
            print(f"work directories kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
