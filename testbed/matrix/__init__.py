"""The interop matrix: implementations × scenarios, cells run as `testbed run` subprocesses."""
