"""Projection heads put on top of a backbone during self-supervised training and dropped afterwards."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ProjectionMLP(nn.Module):
    """SimCLR's projection head g(h) = W2 ReLU(BN(W1 h)) (Chen et al. 2020, sec. 2.1; BN as in the official code).

    (B, in_dim) -> (B, out_dim). The loss is computed on g(h); h (the backbone feature) is what is evaluated:
    the paper finds h linearly more useful than g(h) because g learns to discard what the augmentations vary."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x):
        return self.net(x)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, App. C; facebookresearch/dino `DINOHead`).

    (B, in_dim) -> 3-layer MLP (GELU, hidden_dim) -> (B, bottleneck_dim) -> L2-normalise
    -> weight-normalised linear layer, no bias -> (B, out_dim = K) logits.

    The last layer is W = g * V / ||V|| row by row. With `norm_last_layer` g is fixed to 1, so every output is the
    cosine between the normalised bottleneck and one of K unit vectors (a prototype, as in SwAV): logits lie in
    [-1, 1] and the temperatures alone set how peaked the softmax can be. The paper found this stabilises training.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = True, n_layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers = []
        for i in range(n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0  # g, (out_dim, 1)
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(x)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "DINOHead":
        """A head shaped as `state` says (a saved DINOHead's state_dict: its in, hidden, bottleneck and out sizes and
        its number of layers are the weights' shapes), with those weights loaded."""
        linears = sorted(int(k.split(".")[1]) for k in state if k.startswith("mlp.") and k.endswith(".weight"))
        first, last = state[f"mlp.{linears[0]}.weight"], state[f"mlp.{linears[-1]}.weight"]
        out_dim = state["last_layer.parametrizations.weight.original1"].shape[0]
        head = cls(first.shape[1], out_dim, hidden_dim=first.shape[0], bottleneck_dim=last.shape[0],
                   n_layers=len(linears))
        head.load_state_dict(state)
        return head
