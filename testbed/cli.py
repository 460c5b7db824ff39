"""The `testbed` command. Exit codes: 0 as expected, 1 unmet expectation, 2 bad input, 3 missing
capability, 130 interrupted."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from testbed.errors import CapabilityError, Problem, RunError, SpecError, UsageError

DEMO_IMPLEMENTATIONS = ("host", "linux-6.1", "tcp")
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
    s.add_argument("kind", choices=["topology", "experiment", "matrix", "implementations"])
    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("experiment", type=Path)
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="topology template parameter")
    run.add_argument("--results", type=_dir, default="results")
    run.add_argument("--seed", type=int)
    run.add_argument("--shaping", choices=["auto", "netem", "fallback"])
    d = sub.add_parser("demo", help="the interop matrix host, linux-6.1, tcp × the hackathon suite")
    d.add_argument("--results", type=_dir, default="results")
    d.add_argument("--jobs", type=int, default=3,
                   help="cells in parallel (default: 3; guest cells never outnumber the cores)")
    d.add_argument("--experiments", action="store_true",
                   help="instead, run the shipped single experiments one after another")
    v = sub.add_parser("verify", help="check a run directory against its manifest")
    v.add_argument("run_dir", type=Path)
    m = sub.add_parser("matrix", help="run a suite over implementations: client × server × scenario")
    m.add_argument("suite", type=Path)
    m.add_argument("--clients", metavar="A,B", help="client implementations (default: the suite's, else all)")
    m.add_argument("--servers", metavar="C,D", help="server implementations (default: the suite's, else all)")
    m.add_argument("--scenarios", metavar="X,Y", help="scenarios (default: all)")
    m.add_argument("--must-include", metavar="IMPL", help="only cells with IMPL as client or server")
    m.add_argument("--jobs", type=_positive, default=1, help="cells run in parallel (default 1)")
    m.add_argument("--reruns", type=_non_negative, default=0, help="reruns of a cell not as expected (flakes)")
    m.add_argument("--results", type=_dir, default="results")
    m.add_argument("--ci", action="store_true",
                   help="exit 1 only for unexpected cells and regressions against the previous run")
    m.add_argument("--cells", type=Path, metavar="FILE", help="exactly the cells of a JSON list of "
                   "{client, server, scenario} (instead of --clients/--servers/--scenarios)")
    m.add_argument("--pid-file", type=Path, metavar="FILE", help="holds this process's pid while the matrix runs")
    m.add_argument("--inventory", type=Path, metavar="HOSTS.yml",
                   help="shard the cells over the inventory's testbed hosts (playbooks/run-cells.yml)")
    m.add_argument("--accept-new-host-keys", action="store_true", help="--inventory: record unknown host keys")
    h = sub.add_parser("history", help="per cell: change since the previous matrix run, flake rate")
    h.add_argument("--suite")
    h.add_argument("--last", type=_positive, default=10, help="runs the flake rate is computed over")
    h.add_argument("--results", type=_dir, default="results")
    h.add_argument("--json", action="store_true", help="machine-readable output")
    sw = sub.add_parser("sweep", help="run an experiment over combinations of parameter values")
    sw.add_argument("experiment", type=Path)
    sw.add_argument("--vary", action="append", default=[], metavar="NAME=V1,V2,...")
    sw.add_argument("--repeat", type=int, default=3)
    sw.add_argument("--metric", action="append", default=[], metavar="WORKLOAD.METRIC",
                    help="e.g. rr-mptcp.ttfb_p95, bulk.goodput, client.MPTcpExtMPJoinSynAckRx")
    sw.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="fixed parameters")
    sw.add_argument("--jobs", type=int, default=1)
    sw.add_argument("--seed", type=int, default=1)
    sw.add_argument("--results", type=_dir, default="results")
    im = sub.add_parser("images", help="build (or list) cached guest boot images for QEMU implementations")
    im.add_argument("names", nargs="*", help="e.g. linux-6.1 (default: every known image)")
    im.add_argument("--list", action="store_true", help="only list what is cached")
    im.add_argument("--refresh", action="store_true", help="look for a newer kernel package")
    im.add_argument("--deb", type=Path, metavar="PATH",
                    help="`images build NAME --deb PATH`: an image from this kernel .deb (e.g. a v0.92 linux-image)")
    im.add_argument("--kernel", type=Path, metavar="BZIMAGE",
                    help="`images build NAME --kernel BZIMAGE`: an image from this kernel")
    im.add_argument("--modules", type=Path, metavar="DIR", help="--kernel: its lib/modules/<release> tree")
    im.add_argument("--config", type=Path, metavar="FILE",
                    help="--kernel: its .config (to check built-in drivers when it embeds none)")
    pv = sub.add_parser("provision", help="run a playbook (playbooks/) on the hosts of an Ansible inventory")
    pv.add_argument("inventory", type=Path, help="an Ansible inventory in YAML (or JSON)")
    pv.add_argument("playbook", type=Path, help="e.g. playbooks/kernel-upstream.yml")
    pv.add_argument("--limit", metavar="HOSTS", help="only these hosts or groups (Ansible's --limit)")
    pv.add_argument("--extra-vars", "--extra", "-e", dest="extra", action="append", default=[],
                    metavar="NAME=VALUE|@FILE", help="playbook variables (values read as YAML)")
    pv.add_argument("--check", action="store_true", help="Ansible's check mode: report, change nothing")
    pv.add_argument("--timeout", type=float, metavar="S", help="stop the whole run after S seconds")
    pv.add_argument("--accept-new-host-keys", action="store_true",
                    help="record the key of a host not yet in known_hosts (a changed key is still refused)")
    pv.add_argument("--results", type=_dir, default="results")
    c = sub.add_parser("clean", help="remove what killed runs left behind (only ours)")
    c.add_argument("--force", action="store_true", help="also runs whose owner still seems alive")
    return p


def _dir(text: str) -> Path:
    """A directory option (--results): relative to the current directory, made absolute here, once,
    because it is handed on to cells, agents and network functions that run elsewhere."""
    from testbed.spec.source import absolute

    return absolute(text)


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got '{text}'")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got '{text}'")
    return value


def _version() -> str:
    import testbed

    return f"testbed {testbed.__version__}"


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM before a run installs its own handling: nothing is built yet


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # exit 130, like Ctrl-C, not death by the signal
        # Started in the background by a non-interactive shell (or nohup, or a runner that ignores
        # it), the process inherits SIGINT ignored and Python installs no KeyboardInterrupt for it:
        # `kill -INT` was lost until a run installed its own handling (see also __main__.py).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args = _parser().parse_args(argv)
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
    except KeyboardInterrupt:  # not inside a run (a run archives its own interruption)
        print("testbed: interrupted", file=sys.stderr)
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
    if cmd == "matrix":
        return _matrix(args)
    if cmd == "history":
        return _history(args)
    if cmd == "sweep":
        return _sweep(args)
    if cmd == "images":
        return _images(args)
    if cmd == "provision":
        from testbed.provision.command import Request, provision

        return provision(Request(args.inventory, args.playbook, args.limit, args.extra, args.check, args.timeout,
                                 args.accept_new_host_keys, args.results))
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
    from testbed.spec.matrix import Registry, Suite
    from testbed.spec.topology import Topology

    model = {"topology": Topology, "experiment": Experiment, "matrix": Suite, "implementations": Registry}[kind]
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
    """The embedded default: the matrix of this machine's kernel, a Debian 6.1 guest kernel and plain
    TCP, every client × every server over the hackathon suite."""
    if args.experiments:
        return _demo_experiments(args)
    impls = ",".join(DEMO_IMPLEMENTATIONS)
    runner, result = _run_matrix(argparse.Namespace(
        suite=Path(__file__).resolve().parent.parent / "experiments" / "suites" / "hackathon.yaml",
        clients=impls, servers=impls, scenarios=None, must_include=None, jobs=args.jobs, reruns=0, ci=False,
        results=args.results))
    _findings(result["matrix"], result["run_dir"])
    return demo_exit(result["matrix"])


def demo_exit(matrix: dict[str, Any]) -> int:
    """The demo shows what the implementations do: its findings are its output, not its failure. It
    fails when it could not show them: the matrix did not complete, or the testbed failed in a cell."""
    if matrix["status"] == "interrupted":
        return 130
    errors = matrix["summary"].get("error", 0)
    if matrix["status"] != "complete" or errors:
        print(f"demo: the testbed failed in {errors} cell(s) (error); matrix status {matrix['status']}",
              file=sys.stderr)
        return 1
    return 0


def _demo_experiments(args: argparse.Namespace) -> int:
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


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _findings(matrix: dict[str, Any], run_dir: Path, width: int = 160) -> None:
    """One screen: every cell that is not as expected and not excused (unexpected, known, flaky,
    error), one line each with its evidence; listed deviations not reproduced; the report's path."""
    shown = ("unexpected", "known", "flaky", "error")
    cells = [c for c in matrix["cells"].values() if c["verdict"] in shown]
    cells.sort(key=lambda c: (shown.index(c["verdict"]), c["scenario"], c["client"], c["server"]))
    counts = ", ".join(f"{matrix['summary'][v]} {v}" for v in shown if matrix["summary"].get(v))
    print(f"\nfindings: {len(cells)} cell(s) not as expected ({counts})" if cells
          else "\nfindings: none: every cell that ran was as expected")
    for c in cells:
        if c["verdict"] == "known":
            evidence = f"{c.get('deviation')}: {c.get('evidence') or c['reason']}"
        else:
            evidence = c["reason"]
        where = f" [{c['dir']}]" if c.get("dir") else ""
        line = f"  {c['verdict']:<10} {c['scenario']} {c['client']} -> {c['server']}: {evidence}"
        room = width - len(where)
        print((line if len(line) <= room else line[:room - 1] + "…") + where)
    from testbed.matrix.results import not_reproduced_line

    for n in (matrix.get("known_deviations") or {}).get("not_reproduced", []):
        print(f"  {not_reproduced_line(n)}")
    print(f"report: {run_dir / 'report.html'}", flush=True)


def _matrix(args: argparse.Namespace) -> int:
    if args.cells is not None and any((args.clients, args.servers, args.scenarios, args.must_include)):
        raise UsageError("--cells", "cells", "names the cells itself: no --clients/--servers/--scenarios/--must-include")
    if args.inventory is not None:
        from testbed.provision.shard import run_sharded

        return run_sharded(args, (_csv(args.clients), _csv(args.servers), _csv(args.scenarios)))
    pid_file = args.pid_file
    if pid_file is not None:  # a controller signals the matrix through it (testbed.provision.shard)
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
    try:
        return _matrix_local(args)
    finally:
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)


def _matrix_local(args: argparse.Namespace) -> int:
    runner, result = _run_matrix(args)
    matrix = result["matrix"]
    summary = matrix["summary"]
    regressions = matrix["history"]["regressions"]
    from testbed.matrix.results import not_reproduced_line

    for n in (matrix.get("known_deviations") or {}).get("not_reproduced", []):
        print(not_reproduced_line(n))
    print(f"archive: {result['run_dir']}")
    print(f"report: {result['run_dir'] / 'report.html'}", flush=True)
    if matrix["status"] == "interrupted":
        return 130
    if args.ci:  # known deviations and excused cells do not fail CI; new unexpected cells and regressions do
        return 1 if summary["unexpected"] or regressions else 0
    return 0 if all(c.verdict in ("as-expected", "unsupported", "unavailable") for c in runner.cells) else 1


def _run_matrix(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from rich.console import Console

    from testbed.matrix.runner import MatrixRunner
    from testbed.spec.matrix import load_suite

    loaded = load_suite(args.suite)
    console = Console(highlight=False)
    axes, only = (_csv(args.clients), _csv(args.servers), _csv(args.scenarios)), None
    if getattr(args, "cells", None) is not None:
        from testbed.matrix.cellsfile import load_cells

        listed = load_cells(args.cells, loaded)
        axes, only = listed.axes(), listed.keys
    runner = MatrixRunner(loaded, args.results, clients=axes[0], servers=axes[1], scenarios=axes[2],
                          must_include=args.must_include, jobs=args.jobs, reruns=args.reruns, console=console,
                          only=only)
    cells = runner.plan()
    runnable = sum(1 for c in cells if c.verdict is None)
    print(f"matrix {loaded.suite.name}: {len(cells)} cells ({runnable} to run, {len(cells) - runnable} not runnable "
          f"here), --jobs {runner.jobs}, --reruns {runner.reruns}", flush=True)
    result = runner.run()
    matrix = result["matrix"]
    summary = matrix["summary"]
    print("summary: " + ", ".join(f"{n} {v}" for v, n in summary.items() if n), flush=True)
    regressions, fixes = matrix["history"]["regressions"], matrix["history"]["fixes"]
    if matrix["history"]["previous_run"]:
        print(f"since {matrix['history']['previous_run']}: regressions: {', '.join(regressions) or 'none'}; "
              f"fixes: {', '.join(fixes) or 'none'}")
    if args.ci:
        for c in matrix["cells"].values():
            if c["verdict"] not in ("as-expected", "unexpected"):
                print(f"  {c['verdict']}: {c['scenario']} {c['client']} -> {c['server']}: {c['reason']}")
    return runner, result


def _history(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from testbed.matrix import history
    from testbed.matrix.verdicts import LETTER

    db = history.db_path(args.results)
    report = history.report(db, args.suite, args.last)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if not report:
        print(f"no matrix runs recorded in {db}" + (f" for suite {args.suite}" if args.suite else ""))
        return 0
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    for s in report:
        latest, prev = s["latest"], s["previous"]
        table = Table(title=f"suite {s['suite']}: latest run {latest['run_id']} ({latest['status']}); "
                            f"compared with {prev['run_id'] if prev else 'nothing (first run)'}; "
                            f"flake rate over the last {s['runs']} run(s)")
        for col in ("cell", "verdict", "previous", "change", "flake rate",
                    "history, oldest first (" + " ".join(f"{sym} {v}" for v, sym in LETTER.items()) + ")"):
            table.add_column(col)
        colours = {"regression": "red", "fix": "green", "changed": "yellow"}
        for row in s["cells"]:
            colour = colours.get(row["change"], "")
            change = f"[{colour}]{row['change']}[/{colour}]" if colour else row["change"]
            table.add_row(row["cell"], row["verdict"], row["previous"] or "-", change,
                          f"{100 * row['flake_rate']:.0f}%", "".join(LETTER.get(v, "?") for v in row["series"]))
        console.print(table)
        regressions = [r["cell"] for r in s["cells"] if r["change"] == "regression"]
        fixes = [r["cell"] for r in s["cells"] if r["change"] == "fix"]
        print(f"regressions: {', '.join(regressions) or 'none'}; fixes: {', '.join(fixes) or 'none'}")
    return 0


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


def _sweep(args: argparse.Namespace) -> int:
    from testbed.sweep import Sweep, parse_vary

    if args.repeat < 1 or args.jobs < 1:
        raise UsageError("--repeat/--jobs", "", "must be at least 1")
    if not args.metric:
        raise UsageError("--metric", "", "name at least one metric, e.g. bulk.goodput or rr.ttfb_p95")
    sweep = Sweep(args.experiment, parse_vary(args.vary), args.repeat, args.metric, args.results,
                  jobs=args.jobs, seed=args.seed, sets=args.set)
    sweep.check()
    print(f"sweep: {len(sweep.cells)} cells ({' x '.join(str(len(v)) for v in sweep.vary.values())} "
          f"combinations x {args.repeat} repetitions), --jobs {args.jobs}", flush=True)
    run_dir, manifest = sweep.run()
    for row in manifest["summary"]:
        values = " ".join(f"{k}={v}" for k, v in row["values"].items())
        stats = "  ".join(f"{m}: {s['mean']:.6g} ± {s['stdev']:.3g} (n={s['n']})" if s["mean"] is not None
                          else f"{m}: —" for m, s in row["metrics"].items())
        print(f"  {values}: {stats}")
    print(f"plots: {run_dir / 'plots'}")
    print(f"archive: {run_dir}")
    if manifest["status"] == "interrupted":
        return 130
    return 0 if all(c["status"] == "complete" for c in manifest["cells"]) else 1


def _images(args: argparse.Namespace) -> int:
    from testbed.emulation.qemu import images

    if args.list:
        for image in images.list_images():
            print(f"{image.name}\t{image.release}\tmptcp={'yes' if image.mptcp else 'no'}\t{image.kernel.parent}"
                  + (f"\tflavour={image.flavour}" if image.flavour else ""))
        return 0
    names = args.names[1:] if args.names[:1] == ["build"] else args.names  # `images build NAME ...`
    if args.deb is not None or args.kernel is not None or args.modules is not None or args.config is not None:
        return _image_from_file(args, names)
    # Images built from a user's kernel are reported (and booted once if never booted), not rebuilt.
    user = {n: img for n in names if n not in images.names() and (img := images.load(n)) is not None
            and img.source is not None}
    unknown = [n for n in names if n not in images.names() and n not in user]
    if unknown:
        raise SpecError([Problem("images", None, None, n, f"unknown image; known: {', '.join(images.names())}")
                         for n in unknown])
    for name in names or images.names():
        try:
            image = user[name] if name in user else images.build(name, refresh=args.refresh)
        except images.ImageError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 3
        _report_image(image)
    return 0


def _image_from_file(args: argparse.Namespace, names: list[str]) -> int:
    """`testbed images build NAME --deb PATH` / `--kernel BZIMAGE [--modules DIR] [--config FILE]`."""
    from testbed.emulation.qemu import images

    if len(names) != 1:
        raise UsageError("images", "name", "--deb/--kernel build one image: `testbed images build NAME --deb PATH`")
    try:
        image = images.build_from_file(names[0], deb=args.deb, kernel=args.kernel, modules=args.modules,
                                       config=args.config, log=lambda m: print(m, file=sys.stderr))
    except images.ImageInputError as exc:
        raise SpecError([exc.problem]) from None
    except images.ImageError as exc:
        print(f"{names[0]}: {exc}", file=sys.stderr)
        return 3
    _report_image(image)
    return 0


def _report_image(image: Any) -> None:
    """One line per image (what guest-images.yml compares with `--list`), after a first boot of an
    image that has not been booted yet: the boot records what its kernel counts and which MPTCP it has."""
    needs_boot = (image.mptcp and image.mptcp_counters is None) or (image.source is not None and image.flavour is None)
    if needs_boot and os.geteuid() == 0:
        _first_boot(image)
    flavour = f", flavour={image.flavour}" if image.flavour else ""
    print(f"{image.name}: {image.release} (mptcp={'yes' if image.mptcp else 'no'}{flavour}) in {image.kernel.parent}")


def _first_boot(image: Any) -> None:
    """Boot a new image once: it proves it boots, and records the counters its kernel has (the matrix
    derives which counter checks a guest cell can make from them)."""
    from testbed.emulation.qemu.guest import Guest, GuestError

    guest = Guest(f"first-boot-{os.getpid()}")
    try:
        guest.boot(image)
        detected = image.detected or {}
        release = f" {detected['release']}" if detected.get("release") else ""
        print(f"{image.name}: boots in {guest.ready_seconds:.1f} s ({guest.accel}); "
              f"{len(image.mptcp_counters or ())} MPTcpExt counters; MPTCP: {image.flavour or 'unknown'}{release}")
    except GuestError as exc:
        print(f"{image.name}: built, but the first boot failed: {exc}", file=sys.stderr)
    finally:
        guest.shutdown()


def _clean(force: bool) -> int:
    from testbed.state import clean

    results = clean(force)
    for run_id, what in results:
        print(f"{run_id}: {what}")
    if not results:
        print("nothing to clean")
    return 0
