"""Kill stress: SIGKILL real ``kdforge`` processes at many points, resume, compare.

Four scenarios, each a tiny CPU run: ``train`` (a plain run), ``scheme`` (born-again
networks, a sequence of runs), ``compress`` (prune with a fine-tune, then int8) and
``soft-labels`` (a three-shard store). For each, an uninterrupted ``kdforge`` process is the
reference; it also counts how often it reaches each fault point (``KDFORGE_FAULT_LOG``,
:mod:`kdforge.core.faults`). Then every trial starts the same command in a fresh directory
and kills it, either at a fault point (``KDFORGE_FAULT=POINT:N``, ``N`` drawn among the
reference's hits) or from outside at a random time (``SIGKILL`` after a random share of the
reference's wall time), resumes it (``kdforge train --resume RUN_DIR``, ``kdforge compress
--resume``, rerunning ``soft-labels``; a run killed before it wrote its ``config.yaml`` is
started again, as the error message of ``--resume`` says) and compares the finished tree
with the reference's (:func:`tests.reliability.killing.tree_differences`: weights bit for
bit, JSON without timing fields). Resumes run in this process (the same functions the CLI
calls), so a trial costs one ``kdforge`` process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kill_stress.py --budget 270

writes ``benchmarks/results/kill_stress.json`` (``kill_points``, ``kills``,
``resumed_equal``, ``failures``, and per-trial records) and ``kill_stress.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reliability.killing import (  # noqa: E402
    compress_config,
    kdforge,
    scheme_config,
    start,
    store_config,
    train_config,
    tree_differences,
    write_yaml,
)

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Scenario:
    name: str
    config: Callable[[Path], dict]      # out directory -> config dict
    command: Callable[[Path], list[str]]  # config file -> kdforge arguments
    resume: Callable[[Path, dict], None]  # out directory, config dict -> resumed


def _resume_train(out: Path, cfg: dict) -> None:
    from kdforge import api
    from kdforge.config import parse_config

    run_dir = out / cfg["name"]
    if (run_dir / api.CONFIG_FILE).is_file():
        api.resume(run_dir, verbose=False)
    else:  # killed before it wrote its config: --resume says to start it again
        api.train(parse_config(cfg), verbose=False)


def _resume_compress(out: Path, cfg: dict) -> None:
    from kdforge.compress.config import CompressConfig
    from kdforge.compress.pipeline import compress
    from kdforge.config import parse_config

    compress(parse_config(cfg, kind=CompressConfig), resume=True, verbose=False)


def _resume_store(out: Path, cfg: dict) -> None:
    from kdforge.config import SoftLabelConfig, parse_config
    from kdforge.jobs.soft_labels import generate

    generate(parse_config(cfg, kind=SoftLabelConfig), verbose=False)


def scenarios(teacher: Path) -> list[Scenario]:
    data = train_config(Path("."))["data"]
    return [
        Scenario("train", lambda out: train_config(out, epochs=3),
                 lambda c: ["train", str(c), "--quiet"], _resume_train),
        Scenario("scheme", lambda out: scheme_config(out),
                 lambda c: ["train", str(c), "--quiet"], _resume_train),
        Scenario("compress", lambda out: compress_config(out, teacher),
                 lambda c: ["compress", str(c), "--quiet"], _resume_compress),
        Scenario("soft-labels", lambda out: store_config(out, teacher, data),
                 lambda c: ["soft-labels", str(c), "--quiet"], _resume_store),
    ]


def reference(scenario: Scenario, work: Path) -> tuple[Path, dict[str, int], float]:
    """The uninterrupted run: its tree, the fault points it reached, its wall time."""
    out = work / scenario.name / "reference"
    cfg = scenario.config(out / "tree")
    path = write_yaml(out / "config.yaml", cfg)
    log = out / "hits.json"
    begin = time.perf_counter()
    proc = kdforge(*scenario.command(path), log=log)
    seconds = time.perf_counter() - begin
    if proc.returncode != 0:
        raise SystemExit(f"the reference {scenario.name} run failed:\n{proc.stderr[-3000:]}")
    return out / "tree", json.loads(log.read_text()), seconds


def plan(hits: dict[str, int], per_point: int, timed: int, rng: random.Random) -> list[tuple]:
    """Trials: ("fault", POINT, N) for up to ``per_point`` hits of each point, and
    ("time", share) ``timed`` random-time kills."""
    trials: list[tuple] = []
    for point, count in sorted(hits.items()):
        chosen = sorted(rng.sample(range(1, count + 1), min(per_point, count)))
        trials += [("fault", point, n) for n in chosen]
    trials += [("time", round(rng.uniform(0.1, 0.9), 3)) for _ in range(timed)]
    rng.shuffle(trials)
    return trials


def trial(scenario: Scenario, spec: tuple, work: Path, index: int, expected: Path,
          wall: float) -> dict:
    out = work / scenario.name / f"trial-{index:03d}"
    cfg = scenario.config(out / "tree")
    path = write_yaml(out / "config.yaml", cfg)
    record: dict = {"scenario": scenario.name, "kill": ":".join(map(str, spec[1:])),
                    "how": spec[0]}
    if spec[0] == "fault":
        proc = kdforge(*scenario.command(path), fault=f"{spec[1]}:{spec[2]}")
        record["returncode"] = proc.returncode
    else:
        child = start(*scenario.command(path))
        time.sleep(spec[1] * wall)
        child.kill()
        child.wait()
        record["returncode"] = child.returncode
    record["killed"] = record["returncode"] == -9
    if record["returncode"] not in (0, -9):
        record["error"] = f"the killed process failed by itself (exit {record['returncode']})"
        return record
    try:
        scenario.resume(out / "tree", cfg)
    except Exception as exc:  # a resume that fails is a finding, not a crash of the script
        record["error"] = f"resume failed: {type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()[-2000:]
        return record
    problems = tree_differences(expected, out / "tree")
    record["equal"] = not problems
    if problems:
        record["error"] = "; ".join(problems[:10])
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=270, help="seconds; no trial starts "
                        "after it (the references come first)")
    parser.add_argument("--per-point", type=int, default=1, help="kills per fault point")
    parser.add_argument("--timed", type=int, default=2, help="random-time kills per scenario")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "kill_stress.json")
    args = parser.parse_args(argv)
    os.environ.pop("KDFORGE_FAULT", None)
    rng = random.Random(args.seed)
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kdforge-kill-") as tmp:
        work = Path(tmp)
        from kdforge import api
        from kdforge.config import parse_config

        teacher = api.train(parse_config(train_config(work / "teacher", name="teacher",
                                                      epochs=2)), verbose=False).run_dir
        chosen = [s for s in scenarios(teacher) if not args.only or s.name in args.only]
        queues, refs = {}, {}
        for scenario in chosen:
            tree, hits, wall = reference(scenario, work)
            refs[scenario.name] = (tree, hits, wall)
            queues[scenario.name] = plan(hits, args.per_point, args.timed, rng)
            print(f"{scenario.name}: reference {wall:.1f} s, {sum(hits.values())} hits of "
                  f"{len(hits)} points", flush=True)
        records: list[dict] = []
        index = 0
        while any(queues.values()) and time.perf_counter() - begin < args.budget:
            for scenario in chosen:  # round robin: every scenario gets its share
                if not queues[scenario.name] or time.perf_counter() - begin >= args.budget:
                    continue
                spec = queues[scenario.name].pop(0)
                tree, _, wall = refs[scenario.name]
                record = trial(scenario, spec, work, index, tree, wall)
                index += 1
                records.append(record)
                print(f"  {scenario.name:11s} {record['how']:5s} {record['kill']:40s} "
                      f"killed={record['killed']} equal={record.get('equal')}"
                      + (f"  {record['error']}" if "error" in record else ""), flush=True)
    kills = [r for r in records if r["killed"]]
    failures = [{k: r[k] for k in ("scenario", "how", "kill", "error") if k in r}
                for r in records if "error" in r]
    summary = {
        "kill_points": sorted({f"{r['scenario']}/{r['kill'].rsplit(':', 1)[0]}"
                               for r in kills if r["how"] == "fault"}),
        "kills": len(kills),
        "resumed_equal": sum(1 for r in kills if r.get("equal")),
        "failures": failures,
        "timed_kills": sum(1 for r in kills if r["how"] == "time"),
        "trials": len(records),
        "not_killed": len(records) - len(kills),
        "untried": sum(len(q) for q in queues.values()),
        "reference_points": {name: hits for name, (_, hits, _) in refs.items()},
        "settings": {"budget_s": args.budget, "per_point": args.per_point,
                     "timed": args.timed, "seed": args.seed,
                     "threads": os.environ.get("OMP_NUM_THREADS")},
        "seconds": round(time.perf_counter() - begin, 1),
        "records": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(summary))
    print(f"{summary['kills']} kills ({summary['timed_kills']} at random times), "
          f"{summary['resumed_equal']} resumed to the reference, {len(failures)} failures; "
          f"{args.out}")
    return 1 if failures else 0


def markdown(summary: dict) -> str:
    lines = ["# Kill stress (`benchmarks/kill_stress.py`)", "",
             f"{summary['kills']} SIGKILLs of real `kdforge` processes "
             f"({summary['timed_kills']} at random times, the rest at "
             f"{len(summary['kill_points'])} named fault points), each resumed and compared "
             "with an uninterrupted run (weights bit for bit, metrics without timing fields): "
             f"**{summary['resumed_equal']} of {summary['kills']} equal**, "
             f"{len(summary['failures'])} failures. {summary['trials']} trials in "
             f"{summary['seconds']} s ({summary['not_killed']} finished before the kill).", "",
             "| scenario | how | kill | killed | equal |", "|---|---|---|---|---|"]
    for r in summary["records"]:
        lines.append(f"| {r['scenario']} | {r['how']} | `{r['kill']}` | {r['killed']} | "
                     f"{r.get('equal', '-')} |")
    if summary["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in summary["failures"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
