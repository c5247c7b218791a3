"""Classification heads on pooled features: linear, or an MLP of 1-3 hidden layers
(the paper's Table 2).

A head is described by a small JSON-able spec that `core.models.load` stores in
config.json under ``explorer_head`` next to ``explorer_head.safetensors``::

    {"type": "linear" | "mlp1" | "mlp2" | "mlp3", "in_dim": D, "hidden": H or null,
     "num_labels": C, "pooling": "cls" | "mean" | "pooler"}

and rebuilt with ``build_head(spec["type"], spec["in_dim"], spec["num_labels"],
hidden=spec["hidden"])``. Keep the parameter names stable: they are the keys
of the saved safetensors.
"""
from __future__ import annotations

from torch import nn

HEADS = ("linear", "mlp1", "mlp2", "mlp3")


class MLPHead(nn.Module):
    """``layers`` x (Linear -> GELU -> Dropout), then Linear to the classes.

    Dropout is always a module (p may be 0) so parameter names do not depend on it.
    """

    def __init__(self, in_dim: int, num_labels: int, layers: int, hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        self.kind, self.in_dim, self.num_labels = f"mlp{layers}", int(in_dim), int(num_labels)
        self.hidden = int(hidden or in_dim)
        mods, width = [], self.in_dim
        for _ in range(layers):
            mods += [nn.Linear(width, self.hidden), nn.GELU(), nn.Dropout(dropout)]
            width = self.hidden
        mods.append(nn.Linear(width, self.num_labels))
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


def build_head(kind: str, in_dim: int, num_labels: int, hidden: int | None = None, dropout: float = 0.1) -> nn.Module:
    """A fresh head: ``linear`` is an ``nn.Linear(in_dim, num_labels)``; ``mlpK`` has K
    hidden layers of width ``hidden`` (default ``in_dim``). ``dropout`` only acts in training."""
    if kind == "linear":
        return nn.Linear(int(in_dim), int(num_labels))
    if kind in HEADS:
        return MLPHead(in_dim, num_labels, layers=int(kind[3:]), hidden=hidden, dropout=dropout)
    raise ValueError(f"unknown head {kind!r}: use one of {', '.join(HEADS)}")


def head_spec(module: nn.Module, pooling: str = "cls") -> dict:
    """The spec that rebuilds ``module`` with `build_head` (see module docstring)."""
    if isinstance(module, MLPHead):
        return {"type": module.kind, "in_dim": module.in_dim, "hidden": module.hidden,
                "num_labels": module.num_labels, "pooling": pooling}
    if isinstance(module, nn.Linear):
        return {"type": "linear", "in_dim": module.in_features, "hidden": None,
                "num_labels": module.out_features, "pooling": pooling}
    raise TypeError(f"not a head built by core.models.heads: {type(module).__name__}")
