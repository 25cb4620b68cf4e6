"""Building blocks shared by the models: one MLP block (with its Linear and fused ReLU + dropout), one FM
interaction, one weight initialiser."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recsys.kernels.linear import linear as kernels_linear


class Dice(nn.Module):
    """DIN's data-adaptive activation: p(x) * x + (1 - p(x)) * alpha * x with p = sigmoid(BN(x)), the
    batch-normalised input (no affine) and a learned slope alpha per unit. Works on [..., width]."""

    def __init__(self, width: int, eps: float = 1e-8):
        super().__init__()
        self.norm = nn.BatchNorm1d(width, affine=False, eps=eps)
        self.alpha = nn.Parameter(torch.zeros(width))
        self.register_buffer("_zeros", torch.zeros(width), persistent=False)
        self.register_buffer("_ones", torch.ones(width), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.norm(x.reshape(-1, x.shape[-1])))
        # The gate alpha + (1 - alpha) * p is a per-unit affine map of p: batch_norm in inference form with
        # mean 0 and variance 1 (eps 0) is exactly that map, and exports as one BatchNormalization node
        # instead of a Mul and an Add over every activation (DIN's attention MLP runs Dice on
        # candidates x behaviours rows when serving; 1.14x on its ONNX latency, BENCHMARKS "Serving").
        gate = nn.functional.batch_norm(p, self._zeros, self._ones, weight=1.0 - self.alpha, bias=self.alpha,
                                        training=False, eps=0.0)
        return x * gate.view_as(x)


class Dropout(nn.Module):
    """Inverted dropout, as nn.Dropout: in training each entry is kept with probability 1 - p and scaled by
    1 / (1 - p); in evaluation, the identity. The keep mask compares 16 random bits per entry with a
    threshold, the bits cut from full-range 64-bit draws, four entries per draw: on CPU the generator's cost
    is per draw, so this is 3.5x cheaper than one float32 `torch.rand` per entry (1.4 against 4.7 ms for a
    4096 x 400 batch on one core), itself 6x cheaper than nn.Dropout's `bernoulli_`; dropout's random numbers
    were 17% of a DeepFM training step. The drop rate is p rounded to a multiple of 1/65536
    (`keep_probability`: within 8e-6 of 1 - p); the scale is nn.Dropout's 1 / (1 - p)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        dropped = round(p * 65536)  # of the 65536 values of 16 bits, these many drop
        # Signed 16-bit values run from -32768: those below the threshold (`dropped` of them) drop.
        self.threshold = dropped - 32768
        self.keep_probability = 1.0 - dropped / 65536

    def random_bits(self, x: torch.Tensor) -> torch.Tensor:
        """16 random bits per entry of x, as int16 of x's shape: an entry drops where they are below
        `threshold`."""
        n = x.numel()
        # random_(-2**63, None) draws the whole int64 range; a plain random_() leaves the top bit 0, which
        # would bias every fourth entry's bits.
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)
        return words.view(torch.int16)[:n].view(x.shape)

    def kept(self, x: torch.Tensor) -> torch.Tensor:
        """Fresh keep mask for x: 1 where an entry is kept, 0 where it drops, in x's dtype and shape. The
        comparison writes its 1s and 0s straight into the float result: a bool comparison then a conversion
        took two passes and 9x as long."""
        keep = torch.empty_like(x)
        return torch.ge(self.random_bits(x), self.threshold, out=keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return scaled_product(x, self.kept(x), 1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "prelu": nn.PReLU,
               "leaky_relu": nn.LeakyReLU, "dice": Dice}


def activation(name: str, width: int | None = None) -> nn.Module:
    """The named activation; `width` (the layer's units) is needed by the ones with per-unit state (Dice)."""
    try:
        cls = ACTIVATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None
    if cls is Dice:
        if width is None:
            raise ValueError("the dice activation needs the layer width")
        return Dice(width)
    return cls()


class MLP(nn.Sequential):
    """Linear -> BatchNorm -> activation -> Dropout per hidden layer, then an optional plain Linear
    to `output_dim` (the order FuxiCTR and BARS use)."""

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int],
        *,
        activation_name: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_dim: int | None = None,
    ):
        layers: list[nn.Module] = []
        width = input_dim
        for units in hidden_units:
            layers.append(Linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(activation(activation_name, units))
            if dropout > 0:
                layers.append(Dropout(dropout))
            width = units
        if output_dim is not None:
            layers.append(Linear(width, output_dim))
            width = output_dim
        super().__init__(*layers)
        self.output_dim = width
        # Indices of the ReLUs followed by a Dropout: in training the pair runs as one `relu_dropout`.
        self._relu_then_dropout = frozenset(
            i for i in range(len(layers) - 1) if type(layers[i]) is nn.ReLU and isinstance(layers[i + 1], Dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self._relu_then_dropout:
            return super().forward(x)
        skip_next = False
        for i, layer in enumerate(self):
            if skip_next:
                skip_next = False
            elif i in self._relu_then_dropout:
                x = relu_dropout(x, self[i + 1])
                skip_next = True
            else:
                x = layer(x)
        return x


class Linear(nn.Linear):
    """nn.Linear (same parameters, state dict and initialisation) whose product runs through
    `recsys.kernels.linear`: oneDNN on CPU in float32, `F.linear` elsewhere and in export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels_linear(x, self.weight, self.bias)


class _ReLUDropout(torch.autograd.Function):
    """ReLU then inverted dropout as one autograd node. Forward: relu(x) times the scaled keep mask, in place.
    Backward: the output is positive exactly where x > 0 and the entry was kept, so the saved output (which
    the next layer saves anyway) is the whole mask: g * scale there, 0 elsewhere, in place. The same numbers
    as ReLU then `Dropout` with the same bits, bit for bit; the pair instead keeps ReLU's output and the
    mask alive for backward (two more activation-sized tensors per layer) and allocates one more each way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        # relu(x) * keep * scale = relu(scale * x * keep) (scale > 0, keep 0 or 1): two passes over the
        # activations, written into the mask's memory. A bool mask with masked_fill_ ran 3x slower.
        out = scaled_product(x, keep, scale, out=keep).clamp_min_(0.0)
        ctx.save_for_backward(out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0.0).mul_(ctx.scale), None, None


def relu_dropout(x: torch.Tensor, dropout: Dropout) -> torch.Tensor:
    """`dropout(relu(x))` for a module in training, fused where the activations are float32."""
    if x.dtype != torch.float32 or dropout.p == 0.0:
        return dropout(torch.relu(x))
    return _ReLUDropout.apply(x, dropout.kept(x), 1.0 / (1.0 - dropout.p))


def scaled_product(x: torch.Tensor, keep: torch.Tensor, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """scale * x * keep in one pass (`addcmul` onto a broadcast zero): x times its scaled keep mask with the
    same rounding as `x * (keep * scale)` when keep is 0 or 1, without the pass that scales the mask."""
    zero = x.new_zeros(())
    return torch.addcmul(zero, x, keep, value=scale) if out is None else torch.addcmul(zero, x, keep, value=scale, out=out)


def fm_interaction(emb: torch.Tensor) -> torch.Tensor:
    """Second-order FM term of field embeddings [B, F, D] -> [B]: 1/2 sum_k ((sum_f e)^2 - sum_f e^2)."""
    square_of_sum = emb.sum(dim=1).pow(2)
    sum_of_square = emb.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


def init_linear_layers(module: nn.Module) -> None:
    """Xavier-normal weights and zero biases for every Linear (BARS's initialisation); embedding tables
    initialise themselves."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
