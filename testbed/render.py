"""The rendered topology as users see it: their YAML with every interface and address filled in."""

from __future__ import annotations

import io

from testbed.spec.load import LoadedTopology


def render_yaml(loaded: LoadedTopology) -> str:
    from ruamel.yaml import YAML

    topo = loaded.topology
    res = loaded.resolved
    data = topo.model_dump(mode="json", exclude_none=True, exclude={"defaults", "kinds"})
    for name, node in data["nodes"].items():
        if name in res.interfaces:
            node["interfaces"] = {i.name: {k: v for k, v in (("address", i.address), ("address6", i.address6),
                                                             ("peer", ":".join(i.peer) if i.peer else None))
                                           if v is not None} | {k: str(v) for k, v in (("address", i.address),
                                                                                      ("address6", i.address6))
                                                               if v is not None}
                                  for i in res.interfaces[name]}
            if res.served.get(name):
                node["serves"] = [str(n) for n in res.served[name]]
            node["routes"] = [f"{r.destination} via {r.via or 'direct'} dev {r.interface}"
                              + (f" table {r.table}" if r.table else "") for r in res.routes[name]]
            if res.rules[name]:
                node["source_rules"] = [f"from {r.address} table {r.table}" for r in res.rules[name]]
    for li, link in enumerate(data["links"]):
        ends = []
        for ei, end in enumerate(topo.links[li].endpoints):
            if topo.nodes[end.node].kind == "switch":
                ends.append(end.node)
            else:
                intf = next(i for i in res.interfaces[end.node] if i.link == li)
                ends.append(f"{end.node}:{intf.name}")
            del ei
        link["endpoints"] = ends
        seg = next(s for s in res.segments if li in s.links)
        if seg.subnet is not None:
            link["subnet"] = str(seg.subnet)
        if seg.subnet6 is not None:
            link["subnet6"] = str(seg.subnet6)
    if loaded.parameters:
        data = {"parameters": {k: str(v) if not isinstance(v, bool | int) else v
                               for k, v in loaded.parameters.items()}, **data}
    out = io.StringIO()
    y = YAML()
    y.default_flow_style = None
    y.width = 120
    y.dump(data, out)
    return out.getvalue()
