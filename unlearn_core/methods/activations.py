"""Reading a decoder layer's output during a forward pass (forward hooks), for losses on activations.

``layer_output(model, index, batch, prefix)`` runs the whole model (through its DDP / DeepSpeed
wrapper, so gradients are synchronised as usual) on one view and returns the hidden states that
decoder layer ``index`` of the language model produced: ``[B, T, d]``, with the graph attached when
gradients are on. The hook is removed before the function returns, so a backward pass that
recomputes the layer (gradient checkpointing) adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from unlearn_core.data.encode import model_inputs
from unlearn_core.models.families import decoder_layers
from unlearn_core.tensors import unwrap_model


@contextmanager
def captured_output(module: nn.Module) -> Iterator[list[Tensor]]:
    """The outputs ``module`` produces inside the ``with`` block (the hidden states of a decoder layer
    that returns a tuple), in call order."""
    got: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        got.append(output[0] if isinstance(output, tuple) else output)

    handle = module.register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()


def layer_module(model: nn.Module, index: int) -> nn.Module:
    """Decoder layer ``index`` of the language model under any wrapper (``IndexError`` naming the
    number of layers when there is no such layer)."""
    _, layers = decoder_layers(unwrap_model(model))
    if not 0 <= index < len(layers):
        raise IndexError(
            f"the language model has {len(layers)} decoder layers (0..{len(layers) - 1}), not {index}"
        )
    return layers[index]


def layer_output(model: nn.Module, index: int, batch: Mapping[str, Any], prefix: str = "") -> Tensor:
    """Output hidden states ``[B, T, d]`` of decoder layer ``index`` on the view ``prefix`` of ``batch``."""
    with captured_output(layer_module(model, index)) as got:
        model(**model_inputs(batch, prefix, labels=False), use_cache=False)
    if len(got) != 1:
        raise RuntimeError(f"decoder layer {index} ran {len(got)} times in one forward pass, expected once")
    return got[0]
