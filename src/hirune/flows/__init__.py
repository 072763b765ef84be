"""Normalizing flows: exact log-likelihood by the change of variables.

    flow = Flow(FlowConfig("glow", shape=(1, 28, 28), levels=2, steps=8, hidden=128))
    nll = -flow.log_prob(x)                      # nats per sample, exact
    x = flow.sample(64, temperature=0.7)

`layers.py` holds the invertible layers (ActNorm, invertible 1x1 convolution in LU form,
affine coupling with checkerboard / channel / vector masks, squeeze, MADE and MAF);
`models.py` stacks them into RealNVP, Glow and MAF.  Images are dequantized before a flow
sees them (`hirune.likelihood.dequantize`), the same way for every family.
"""

# hirune.models registers the flows as model kind "flow" and flows/models.py uses its
# config helpers: importing it first keeps `import hirune.flows` free of an import cycle
from .. import models as _models  # isort: skip
from .layers import (MADE, ActNorm, AffineCoupling, InvertibleConv1x1, MAFLayer, Reverse, Squeeze, channel_mask,
                     checkerboard_mask, vector_mask)
from .models import FLOW_KINDS, Flow, FlowConfig

__all__ = ["FLOW_KINDS", "MADE", "ActNorm", "AffineCoupling", "Flow", "FlowConfig", "InvertibleConv1x1",
           "MAFLayer", "Reverse", "Squeeze", "channel_mask", "checkerboard_mask", "vector_mask"]

del _models
