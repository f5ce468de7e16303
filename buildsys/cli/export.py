"""The graph as text for other tools: Graphviz DOT and Mermaid."""
from __future__ import annotations

import json

from buildsys.lang.graph import Graph


def _nodes(graph: Graph, names):
    return [(n, graph.targets[n]) for n in names]


def to_dot(graph: Graph, names: list[str]) -> str:
    lines = ["digraph bb {", "  rankdir=LR;", "  node [shape=box, fontname=Helvetica];"]
    for name, target in _nodes(graph, names):
        shape = ", shape=ellipse" if target.phony else ""
        lines.append(f"  {json.dumps(name)} [label={json.dumps(name)}{shape}];")
    for name in names:
        for dep in graph.deps[name]:
            lines.append(f"  {json.dumps(dep)} -> {json.dumps(name)};")
    lines.append("}")
    return "\n".join(lines)


def to_mermaid(graph: Graph, names: list[str]) -> str:
    ids = {name: f"t{i}" for i, name in enumerate(names)}
    lines = ["flowchart LR"]
    for name, target in _nodes(graph, names):
        label = name.replace('"', "#quot;")
        lines.append(f'  {ids[name]}(["{label}"])' if target.phony else f'  {ids[name]}["{label}"]')
    for name in names:
        for dep in graph.deps[name]:
            lines.append(f"  {ids[dep]} --> {ids[name]}")
    return "\n".join(lines)
