"""The summary table `testbed run` prints."""

from __future__ import annotations

from typing import Any


def print_summary(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result.manifest
    console = Console(highlight=False)
    table = Table(title=f"{m.get('name')} — status {m.get('status')}, outcome {m.get('outcome', '-')}")
    table.add_column("check")
    table.add_column("expected")
    table.add_column("measured")
    table.add_column("verdict")
    for c in m.get("checks", []):
        colour = {"pass": "green", "info": "cyan", "unobserved": "magenta"}.get(c["verdict"], "red")
        measured = c["measured"]
        table.add_row(c["name"], str(c["expected"]), str(measured), f"[{colour}]{c['verdict']}[/{colour}]")
    console.print(table)
    for c in m.get("checks", []):
        if c["verdict"] == "unobserved":  # the testbed's failure to look, not the implementation's
            print(f"unobserved: {c['name']}: {c['detail']}", flush=True)
    if m.get("error"):
        print(f"error: {m['error']}", flush=True)
    # Plain print: rich would wrap a long path, and scripts read this line.
    print(f"archive: {result.run_dir}", flush=True)
