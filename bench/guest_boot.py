"""Boot time and host memory of a QEMU guest (default: the linux-6.1 image), median of 3 boots.

For each boot: seconds from starting qemu to the control channel answering (guestd's hello), to the
guest being ready for use (NICs named, sysctls snapshotted), the guest's own uptime when /init
started (the kernel's share), the host RSS of the qemu process once ready, and shutdown time.
The image is built first if it is not cached (not timed). Needs root (TAP device).

    sudo .venv/bin/python bench/guest_boot.py [--image linux-6.1] [--runs 3] [--accel auto|kvm|tcg] [--mem 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchjson  # noqa: E402

from testbed.emulation.qemu import images  # noqa: E402
from testbed.emulation.qemu.guest import Guest, Nic, random_mac  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="linux-6.1", choices=images.names())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    parser.add_argument("--mem", type=int, default=256, help="guest memory, MB")
    parser.add_argument("--json", default=None, help="also write the figures to this file (bench/run_all.py)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("guest_boot: needs root (TAP devices)", file=sys.stderr)
        return 3
    image = images.build(args.image, log=lambda m: print(m, file=sys.stderr))
    rows = []
    for i in range(args.runs):
        guest = Guest(f"bench{os.getpid()}", mem_mb=args.mem, accel=args.accel)
        try:
            guest.boot(image, [Nic(f"tbqb{os.getpid() % 10**7}t{i}", random_mac())])
            init_line = next((line for line in (guest._hello or {}).get("init_log", "").splitlines()
                              if line.endswith(" started")), "nan")
            rss = guest.rss_bytes() or 0
            stop = time.monotonic()
        finally:
            guest.shutdown()
        rows.append({"control": guest.boot_seconds or 0.0, "ready": guest.ready_seconds or 0.0,
                     "init": float(init_line.split()[0]), "rss_mb": rss / 2**20,
                     "shutdown": time.monotonic() - stop})
        r = rows[-1]
        print(f"boot {i + 1}: control channel {r['control']:.2f} s, ready {r['ready']:.2f} s, /init at "
              f"{r['init']:.2f} s guest uptime, qemu RSS {r['rss_mb']:.0f} MB, shutdown {r['shutdown']:.2f} s "
              f"({guest.accel})")

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"{args.image} ({image.release}, {guest.accel}, {args.mem} MB): median of {len(rows)}: "
          f"control channel ready {med('control'):.2f} s, ready {med('ready'):.2f} s, "
          f"/init at {med('init'):.2f} s, qemu RSS {med('rss_mb'):.0f} MB, shutdown {med('shutdown'):.2f} s")
    benchjson.write(args.json, "guest_boot", [benchjson.table(
        f"{args.image} ({image.release}, {guest.accel}, {args.mem} MB guest)",
        ["boot", "control channel s", "ready s", "/init at s (guest uptime)", "qemu RSS MB", "shutdown s"],
        [[str(i + 1), f"{r['control']:.2f}", f"{r['ready']:.2f}", f"{r['init']:.2f}", f"{r['rss_mb']:.0f}",
          f"{r['shutdown']:.2f}"] for i, r in enumerate(rows)]
        + [["median", f"{med('control'):.2f}", f"{med('ready'):.2f}", f"{med('init'):.2f}", f"{med('rss_mb'):.0f}",
            f"{med('shutdown'):.2f}"]])], figures={"boots": rows, "accel": guest.accel})
    return 0


if __name__ == "__main__":
    sys.exit(main())
