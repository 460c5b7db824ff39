"""Packet-level conformance probes (scapy): behaviour no available peer exhibits, provoked on purpose.

- `options`: MPTCP options at byte level, keys, tokens and HMACs (RFC 8684; RFC 6824 forms).
- `conformance`: the probes (one small class each: name, description, requires, expectations,
  run(ctx) -> ProbeResult) and the raw-socket session they craft and read segments with.
- `probe_agent.py`: the script that runs a probe inside the probe node's namespace (and the
  listener the server node runs for it).
- `driver`: the `probe` workload type, which starts both and serves the probe's counter requests.

A probe is a workload (`{type: probe, probe: NAME}`), so a probe run is an ordinary experiment
(`experiments/probes.yaml`) and a matrix probe cell is one like any other (probe × server).
Modules here other than `driver` import only the standard library and scapy.
"""
