try:
    from testbed.cli import main
except KeyboardInterrupt:  # Ctrl-C while the program is still being loaded: nothing was done
    raise SystemExit(130) from None

raise SystemExit(main())
