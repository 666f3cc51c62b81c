"""An MLP with a leading member axis: K independent networks held as stacked weights.

Member k is initialised from its own generator and draws its dropout masks from it, and its
normalization statistics are its own, so a K-member model and K separate runs with the same
seeds compute the same numbers; a plain run is K = 1. Initialisation follows the study
(Keras): He-uniform hidden layers, Glorot-uniform output layer, zero biases. A hidden layer is
linear -> norm -> activation -> dropout. The model gives the raw last layer; the output
activation is each member's loss's (src/heads.py), and its export's last layer.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from src.config import Activation, Norm, Output

ACTIVATED = {
    Output.identity: lambda t: t,
    Output.sigmoid: torch.sigmoid,
    Output.tanh: torch.tanh,
    Output.softmax: lambda t: torch.softmax(t, dim=-1),
}
# Hidden activations: the function the forward pass calls, and the module export() builds.
HIDDEN = {
    Activation.relu: (torch.relu, nn.ReLU),
    Activation.tanh: (torch.tanh, nn.Tanh),
    Activation.sigmoid: (torch.sigmoid, nn.Sigmoid),
    Activation.gelu: (nn.functional.gelu, nn.GELU),
}
_EXPORT = {
    Output.identity: nn.Identity,
    Output.sigmoid: nn.Sigmoid,
    Output.tanh: nn.Tanh,
    Output.softmax: lambda: nn.Softmax(dim=-1),
}


class MemberMLP(nn.Module):
    def __init__(
        self,
        sizes: list[int],
        activation: Activation,
        generators: list[torch.Generator],
        norm: Norm = Norm.none,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.sizes = sizes
        self.activation, self.activation_module = HIDDEN[activation]
        self.generators = generators
        self.dropout = dropout
        members = len(generators)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            last = i == len(sizes) - 2
            # Glorot-uniform for the output layer, He-uniform (fan_in, relu) for hidden ones.
            bound = math.sqrt(6.0 / (fan_in + fan_out)) if last else math.sqrt(6.0 / fan_in)
            weight = torch.empty(members, fan_in, fan_out)
            for k, generator in enumerate(generators):
                weight[k].uniform_(-bound, bound, generator=generator)
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, fan_out)))
        # The same Parameter objects as a plain list: indexing a ParameterList costs more per
        # call than a minibatch's matmul. Loading a state dict copies into these in place.
        self.layers = list(zip(self.weights, self.biases))
        widths = sizes[1:-1]
        self.norms = nn.ModuleList(
            [MemberNorm(norm, members, width) for width in widths] if norm != Norm.none else []
        )
        self.norm_layers = list(self.norms)  # plain list: no nn.Module lookup per forward

    @property
    def members(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (members, batch, inputs) or (batch, inputs) shared by all members.
        Returns the raw last layer (logits), (members, batch, outputs)."""
        *hidden, (weight, bias) = self.layers
        for i, (w, b) in enumerate(hidden):
            x = torch.baddbmm(b, x, w) if x.dim() == 3 else torch.matmul(x, w) + b
            if self.norm_layers:
                x = self.norm_layers[i](x)
            x = self.activation(x)
            if self.dropout and self.training:
                x = x * self._keep(x.shape[1:], x.dtype)
        return torch.baddbmm(bias, x, weight) if x.dim() == 3 else torch.matmul(x, weight) + bias

    def _keep(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """Inverted-dropout masks (members, batch, width), member k's from its own generator."""
        keep = 1.0 - self.dropout
        masks = [torch.empty(shape).bernoulli_(keep, generator=g) for g in self.generators]
        return (torch.stack(masks) / keep).to(self.weights[0].device, dtype)

    def export(
        self, member: int, output: Output, units: tuple[float, float] = (1.0, 0.0)
    ) -> nn.Sequential:
        """Member ``member`` as a plain torch model (Linear layers, then its loss's ``output``
        activation), for MLflow: loadable anywhere without losslab. ``units`` (scale, offset)
        adds a last affine layer that maps a scaled regression output back into the target's
        units."""
        layers: list[nn.Module] = []
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            linear = nn.Linear(weight.shape[1], weight.shape[2])
            with torch.no_grad():
                linear.weight.copy_(weight[member].T)
                linear.bias.copy_(bias[member, 0])
            layers.append(linear)
            if i < len(self.weights) - 1:
                if self.norms:
                    layers.append(self.norms[i].export(member))
                layers.append(self.activation_module())
                if self.dropout:
                    layers.append(nn.Dropout(self.dropout))
        layers.append(_EXPORT[output]())
        if units != (1.0, 0.0):
            unscale = nn.Linear(1, 1)
            with torch.no_grad():
                unscale.weight.fill_(units[0])
                unscale.bias.fill_(units[1])
            layers.append(unscale)
        return nn.Sequential(*layers).eval()


class MemberNorm(nn.Module):
    """Batch or layer normalization of (members, batch, width) with each member's own scale,
    shift and (batch norm) running statistics: torch's BatchNorm1d would pool the members."""

    def __init__(self, kind: Norm, members: int, width: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.kind = kind
        self.eps = eps
        self.momentum = 0.1  # torch's BatchNorm1d default, so export() matches it
        self.weight = nn.Parameter(torch.ones(members, 1, width))
        self.bias = nn.Parameter(torch.zeros(members, 1, width))
        if kind == Norm.batch:
            self.register_buffer("running_mean", torch.zeros(members, 1, width))
            self.register_buffer("running_var", torch.ones(members, 1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == Norm.layer:
            mean = x.mean(dim=-1, keepdim=True)
            var = x.var(dim=-1, unbiased=False, keepdim=True)
        elif self.training:
            mean = x.mean(dim=1, keepdim=True)
            var = x.var(dim=1, unbiased=False, keepdim=True)
            with torch.no_grad():
                n = x.shape[1]
                unbiased = var * n / max(n - 1, 1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias

    def export(self, member: int) -> nn.Module:
        """Member ``member`` as torch's own BatchNorm1d or LayerNorm (for MLflow)."""
        width = self.weight.shape[-1]
        if self.kind == Norm.layer:
            module: nn.Module = nn.LayerNorm(width, eps=self.eps)
        else:
            module = nn.BatchNorm1d(width, eps=self.eps, momentum=self.momentum)
            module.running_mean.copy_(self.running_mean[member, 0])
            module.running_var.copy_(self.running_var[member, 0])
        with torch.no_grad():
            module.weight.copy_(self.weight[member, 0])
            module.bias.copy_(self.bias[member, 0])
        return module.eval()
