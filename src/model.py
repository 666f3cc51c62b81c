"""An MLP with a leading member axis: K independent networks held as stacked weights.

Member k is initialised from its own generator, so a K-member model and K separate runs with
the same seeds start from the same weights; a plain run is K = 1. Initialisation follows the
study (Keras): He-uniform hidden layers, Glorot-uniform output layer, zero biases.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from src.config import Activation, Output

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
        output: Output,
        generators: list[torch.Generator],
    ) -> None:
        super().__init__()
        self.sizes = sizes
        self.activation, self.activation_module = HIDDEN[activation]
        self.output = output
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

    @property
    def members(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (members, batch, inputs) or (batch, inputs) shared by all members.
        Returns the raw last layer (logits), (members, batch, outputs)."""
        *hidden, (weight, bias) = self.layers
        for w, b in hidden:
            x = self.activation(torch.baddbmm(b, x, w) if x.dim() == 3 else torch.matmul(x, w) + b)
        return torch.baddbmm(bias, x, weight) if x.dim() == 3 else torch.matmul(x, weight) + bias

    def predict_from(self, logits: torch.Tensor) -> torch.Tensor:
        """Activated output (what metrics and users see) from the raw last layer."""
        return ACTIVATED[self.output](logits)

    def export(self, member: int, units: tuple[float, float] = (1.0, 0.0)) -> nn.Sequential:
        """Member ``member`` as a plain torch model (Linear layers, activated output), for
        MLflow: loadable anywhere without losslab. ``units`` (scale, offset) adds a last
        affine layer that maps a scaled regression output back into the target's units."""
        layers: list[nn.Module] = []
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            linear = nn.Linear(weight.shape[1], weight.shape[2])
            with torch.no_grad():
                linear.weight.copy_(weight[member].T)
                linear.bias.copy_(bias[member, 0])
            layers.append(linear)
            if i < len(self.weights) - 1:
                layers.append(self.activation_module())
        layers.append(_EXPORT[self.output]())
        if units != (1.0, 0.0):
            unscale = nn.Linear(1, 1)
            with torch.no_grad():
                unscale.weight.fill_(units[0])
                unscale.bias.fill_(units[1])
            layers.append(unscale)
        return nn.Sequential(*layers).eval()
