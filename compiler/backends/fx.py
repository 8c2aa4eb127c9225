"""The torch backend: the annotated level graph becomes nn.Modules over the runtime.

It reads only what the passes left on the graph (compiler/passes.py): each level's
chunk step, description and the outer parameters it names; the model's segment; each
optimizer's step and description. It creates the parameters, in the order the
graphs name them (so a seed gives the same weights, under the same names, as the
emitted source), points each `get_attr` at where the parameter went, and attaches
one copy of each graph to its module.
"""
from __future__ import annotations

import copy
import functools

import torch.fx as fx
from torch import nn

from ...runtime.model import CONSTANT, Level, Model, init, register
from ...runtime.optim import OptimizerUse
from ..ir import LevelGraph
from ..lower import BackendError, Made


def _create(module: nn.Module, made: list[Made], paths: dict[str, str]) -> None:
    """Register the parameters a graph names on `module` (constant vectors as buffers),
    recording in `paths` where each went (a name that nn.Module already uses gets a
    trailing `_`), and in the module's `__made__` how, for the emitted source."""
    for p in made:
        paths[p.name] = register(module, p.name, init(p.role, p.shape, p.value), buffer=p.role == CONSTANT)
        module.__dict__.setdefault("__made__", []).append((paths[p.name], p.role, p.shape, p.value))


def _placed(graph: fx.Graph, paths: dict[str, str]) -> fx.Graph:
    """A copy of a lowered graph whose `get_attr`s read where the parameters were put. A
    conv names the inputs it carries over by its weight's path, which moves with it."""
    graph = copy.deepcopy(graph)
    for n in graph.nodes:
        if n.op == "get_attr":
            if n.target not in paths:
                raise BackendError(f"`{n.target}` was never created")
            n.target = paths[n.target]
        elif n.op == "call_method" and n.target == "conv":
            n.args = (n.args[0], paths[n.args[1]], *n.args[2:])
    graph.lint()
    return graph


def build_level(d: dict, copy_: int) -> Level:
    """One copy of a level from its node's `desc`, `made` and `step`."""
    level = Level(d["desc"], copy_, d["spec"])
    paths: dict[str, str] = {}
    _create(level, d["made"], paths)
    level.attach(_placed(d["step"], paths))
    return level


def build_model(ir: LevelGraph) -> Model:
    """The model of a level graph after every pass (`passes.run`)."""
    spec, g = ir.spec, ir.graph
    model = Model(spec.name, spec.settings, spec)
    paths = {p.name: register(model, p.name, init(p.role, p.shape)) for p in spec.params}  # embedding, norm, head
    for block in spec.blocks:
        for name in block.levels:
            model.add_level(name, [build_level(g.nodes[f"level:{name}"], c) for c in range(block.repeat)])
    model.finish()
    paths |= {f"{name}.{c}": f"{slot}.{c}" for name, slot in model.slots.items()
              for c in range(len(getattr(model, slot)))}
    _create(model, ir.segment_made, paths)
    model.attach(_placed(ir.segment, paths))
    model.optimizers = build_optimizers(ir)  # the runtime's outer optimizer builds from these alone
    model.draw = functools.partial(diagram, spec)
    return model


def diagram(spec, view: str = "levels"):
    """A checked model's level diagram (`Model.diagram`), drawn again when asked for."""
    from .. import passes
    from .graphviz import diagram
    return diagram(passes.run(spec), view)


def _optimizer_nodes(ir: LevelGraph) -> list[dict]:
    return sorted((d for _, d in ir.graph.nodes(data=True) if d["kind"] == "optimizer"), key=lambda d: d["index"])


def build_optimizer(d: dict) -> fx.GraphModule:
    """The per-parameter step of an optimizer node: `gm(g, W, step, st, hp) -> new W`, `hp`
    the parameter's group (its hyperparameters)."""
    return fx.GraphModule(nn.Module(), copy.deepcopy(d["step"]), class_name=f"{d['name']}_step")


def build_optimizers(ir: LevelGraph) -> tuple[OptimizerUse, ...]:
    """A model's `optimizer` lines, in the order written, each described and its step
    compiled: all that the runtime's outer optimizer needs (`Model.optimizers`), so it
    never needs the compiler. For an optimizer's own level graph, its one optimizer."""
    return tuple(OptimizerUse(d["selector"], d["desc"], build_optimizer(d)) for d in _optimizer_nodes(ir))


__all__ = ["BackendError", "build_level", "build_model", "build_optimizer", "build_optimizers"]
