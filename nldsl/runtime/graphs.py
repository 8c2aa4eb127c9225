"""The GraphModules of levels and models (`Level.step`, `Model.segment`) and of
optimizers' steps: built over the module that holds their parameters, and written as
data that pickle and deepcopy take (torch.save of a model, of its optimizer).

fx pickles a GraphModule as its generated code and traces that code again when it is
loaded, which fails on ours: they were written node by node and call functions
(`scan`, the flow functions) that tracing would run on proxies. So a module holding
one writes it as `Frozen`, its nodes in order, and builds it again when loaded, over
the loaded module's own parameters: the same graph, the same code.
"""
from __future__ import annotations

from torch import fx, nn


class _Ref(str):
    """An argument that is another node of the graph, by that node's name."""


def _by_name(node: fx.Node) -> _Ref:
    return _Ref(node.name)


class Frozen:
    """A GraphModule's graph as plain data: (op, name, target, args, kwargs, type,
    meta) per node, in order (the nodes themselves form a linked list that pickle
    would follow one recursion level per node), and the module's class name."""

    def __init__(self, gm: fx.GraphModule):
        self.class_name = type(gm).__name__
        self.nodes = [(n.op, n.name, n.target, *(fx.node.map_arg(a, _by_name) for a in (n.args, n.kwargs)), n.type,
                       dict(n.meta)) for n in gm.graph.nodes]

    def thaw(self, root: nn.Module) -> fx.GraphModule:
        """The GraphModule again, over `root`'s attributes."""
        graph, made = fx.Graph(), {}

        def node(a):
            return made[a] if isinstance(a, _Ref) else a
        for op, name, target, args, kwargs, type_expr, meta in self.nodes:
            args, kwargs = fx.node.map_aggregate(args, node), fx.node.map_aggregate(kwargs, node)
            made[name] = graph.create_node(op, target, args, kwargs, name, type_expr)
            made[name].meta = dict(meta)
        return graph_module(root, graph, self.class_name)


def graph_module(root: nn.Module, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    """A GraphModule of `graph` that reads root's attributes as they are when it runs: its
    parameters, buffers and submodules are root's own dicts, not the entries fx copies
    when it builds one, so what replaces a parameter (`load_state_dict(assign=True)`,
    FSDP's sharding, `.to()` under torch.__future__'s overwrite) is what the graph reads."""
    gm = fx.GraphModule(root, graph, class_name=class_name)
    gm._parameters, gm._buffers, gm._modules = root._parameters, root._buffers, root._modules
    return gm


def frozen(step):
    """A compiled step as pickle can write it: a GraphModule as `Frozen`; a function (in
    emitted source, written out) as it is, pickled by its name."""
    return Frozen(step) if isinstance(step, fx.GraphModule) else step


def thawed(step, root: nn.Module | None = None):
    """What `frozen` gave, back as it was (a GraphModule over root's attributes)."""
    return step.thaw(nn.Module() if root is None else root) if isinstance(step, Frozen) else step


class HoldsGraphs(nn.Module):
    """A module with GraphModules over its own parameters kept outside `_modules` (so
    each parameter has one name): pickled and deep-copied as `Frozen`, built again over
    the copy's parameters."""

    def __getstate__(self):
        return {k: frozen(v) for k, v in super().__getstate__().items()}

    def __setstate__(self, state):
        super().__setstate__(state)
        for k, v in state.items():
            if isinstance(v, Frozen):
                self.__dict__[k] = v.thaw(self)
