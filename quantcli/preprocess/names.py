"""Give every node a unique, stable name: the QuantPlan refers to nodes by name."""

from __future__ import annotations

import onnx

from quantcli.preprocess.base import Pass, PassResult


class NameNodes(Pass):
    name = "name_nodes"
    in_place = True

    def call(self, model: onnx.ModelProto) -> PassResult:
        seen: set[str] = set()
        renamed = 0
        taken = {n.name for n in model.graph.node if n.name}
        for i, node in enumerate(model.graph.node):
            if node.name and node.name not in seen:
                seen.add(node.name)
                continue
            base = node.name or f"{node.op_type}_{i}"
            candidate, k = base, 1
            while candidate in seen or (candidate != node.name and candidate in taken):
                candidate = f"{base}_{k}"
                k += 1
            node.name = candidate
            seen.add(candidate)
            renamed += 1
        notes = [f"named {renamed} unnamed or duplicate node(s)"] if renamed else []
        return PassResult(model, bool(renamed), notes)
