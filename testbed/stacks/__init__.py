"""MPTCP stack drivers and kernel flavour/version detection."""
