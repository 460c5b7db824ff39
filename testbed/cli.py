"""The `testbed` command. Exit codes: 0 as expected, 1 unmet expectation, 2 bad input, 3 missing
capability, 130 interrupted."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from testbed.errors import CapabilityError, Problem, RunError, SpecError

DEMO_EXPERIMENTS = ("basic-handshake", "dual-homed-join", "signal-address", "backup-path",
                    "link-failure-handover", "lossy-dual-homed", "aggregate")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(2, f"{self.prog}: usage: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="testbed", description="Multipath TCP interop testbed")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("doctor", help="what this machine can do")
    r = sub.add_parser("render", help="print the rendered, validated topology")
    r.add_argument("topology", type=Path)
    r.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    g = sub.add_parser("graph", help="draw a topology")
    g.add_argument("topology", type=Path)
    g.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    g.add_argument("--format", choices=["svg", "mermaid"], default="svg")
    g.add_argument("-o", "--output", type=Path)
    s = sub.add_parser("schema", help="JSON Schema of a file format")
    s.add_argument("kind", choices=["topology", "experiment"])
    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("experiment", type=Path)
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="topology template parameter")
    run.add_argument("--results", type=Path, default=Path("results"))
    run.add_argument("--seed", type=int)
    run.add_argument("--shaping", choices=["auto", "netem", "fallback"])
    d = sub.add_parser("demo", help="run the shipped experiments")
    d.add_argument("--results", type=Path, default=Path("results"))
    v = sub.add_parser("verify", help="check a run directory against its manifest")
    v.add_argument("run_dir", type=Path)
    c = sub.add_parser("clean", help="remove what killed runs left behind (only ours)")
    c.add_argument("--force", action="store_true", help="also runs whose owner still seems alive")
    return p


def _version() -> str:
    import testbed

    return f"testbed {testbed.__version__}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except CapabilityError as exc:
        print(f"testbed: this machine cannot run it: {exc}", file=sys.stderr)
        return 3
    except RunError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _sets(items: list[str]):
    from testbed.spec.template import parse_set

    return parse_set(items)


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "doctor":
        return _doctor()
    if cmd == "render":
        return _render(args)
    if cmd == "graph":
        return _graph(args)
    if cmd == "schema":
        return _schema(args.kind)
    if cmd == "run":
        return _run(args)
    if cmd == "demo":
        return _demo(args)
    if cmd == "verify":
        return _verify(args.run_dir)
    if cmd == "clean":
        return _clean(args.force)
    raise AssertionError(cmd)


def _doctor() -> int:
    from rich.console import Console

    from testbed import doctor

    checks = doctor.checks()
    doctor.render(checks, Console())
    return 0 if doctor.local_mode_ok(checks) else 3


def _render(args: argparse.Namespace) -> int:
    from testbed.render import render_yaml
    from testbed.spec.load import load_topology

    loaded = load_topology(args.topology, _sets(args.set))
    sys.stdout.write(render_yaml(loaded))
    return 0


def _graph(args: argparse.Namespace) -> int:
    from testbed import graph
    from testbed.spec.load import load_topology

    loaded = load_topology(args.topology, _sets(args.set))
    text = graph.svg(loaded.resolved) if args.format == "svg" else graph.mermaid(loaded.resolved)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _schema(kind: str) -> int:
    from testbed.spec.experiment import Experiment
    from testbed.spec.topology import Topology

    model = Topology if kind == "topology" else Experiment
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"testbed {kind}"
    print(json.dumps(schema, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    from testbed.report import print_summary
    from testbed.runner import Runner
    from testbed.spec.load import load_experiment

    loaded = load_experiment(args.experiment, _sets(args.set))
    result = Runner(loaded, args.results, seed=args.seed, cli_set=args.set, shaping=args.shaping).run()
    print_summary(result)
    return result.exit_code


def _demo(args: argparse.Namespace) -> int:
    from testbed.report import print_summary
    from testbed.runner import Runner
    from testbed.spec.load import load_experiment

    root = Path(__file__).resolve().parent.parent / "experiments"
    worst = 0
    archives = []
    for name in DEMO_EXPERIMENTS:
        path = root / f"{name}.yaml"
        print(f"== {name}", flush=True)
        loaded = load_experiment(path)
        result = Runner(loaded, args.results).run()
        print_summary(result)
        archives.append((name, result.run_dir, result.exit_code))
        worst = max(worst, result.exit_code)
        if result.exit_code == 130:
            break
    print("\nArchives:")
    for name, path, code in archives:
        print(f"  {'ok  ' if code == 0 else 'FAIL'} {name}: {path}")
    return worst


def _verify(run_dir: Path) -> int:
    from testbed.archive.store import MANIFEST, verify

    if not (run_dir / MANIFEST).is_file():
        raise SpecError([Problem(str(run_dir), None, None, "", f"no {MANIFEST}: not a run directory")])
    try:
        report = verify(run_dir)
    except ValueError as exc:
        raise SpecError([Problem(str(run_dir / MANIFEST), None, None, "", f"unreadable manifest: {exc}")]) from None
    bad = False
    for kind, files in report.items():
        for f in files:
            print(f"{kind}: {f}")
            bad = True
    if not bad:
        print(f"{run_dir}: all files match the manifest")
    return 1 if bad else 0


def _clean(force: bool) -> int:
    from testbed.state import clean

    results = clean(force)
    for run_id, what in results:
        print(f"{run_id}: {what}")
    if not results:
        print("nothing to clean")
    return 0
