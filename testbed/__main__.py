import signal

# A process started in the background by a non-interactive shell, by nohup or by a test runner that
# ignores SIGINT inherits SIGINT ignored, and Python then never installs its KeyboardInterrupt
# handler: `kill -INT` (how a sharded matrix's controller stops each host's matrix) was lost.
signal.signal(signal.SIGINT, signal.default_int_handler)

try:
    from testbed.cli import main
except KeyboardInterrupt:  # Ctrl-C while the program is still being loaded: nothing was done
    raise SystemExit(130) from None

raise SystemExit(main())
