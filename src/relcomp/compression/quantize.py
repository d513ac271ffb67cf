"""Fake quantization: round tensors to what a quantized model would compute with.

Weights are quantized once, when a plan is realised; activations on every forward
pass, with a straight-through gradient so that attribution still works on a
fake-quantized model. All schemes are symmetric (no zero point), as onnxruntime's
weight quantization and ``MatMulNBits`` use by default.
"""

from __future__ import annotations

import torch

__all__ = [
    "fake_quantize_activations",
    "fake_quantize_dynamic_uint8",
    "fake_quantize_fp16",
    "fake_quantize_int4",
    "fake_quantize_int8",
]

INT8_MAX = 127
#: onnxruntime's symmetric int8 weights: ``max|w|`` maps to half a step past 127
ONNX_INT8_RANGE = 127.5
UINT8_MAX = 255
INT4_MAX = 7


def _symmetric(values: torch.Tensor, absmax: torch.Tensor, levels: int) -> torch.Tensor:
    scale = torch.where(absmax > 0, absmax / levels, torch.ones_like(absmax))
    return torch.clamp(torch.round(values / scale), -levels, levels) * scale


def fake_quantize_int8(weight: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Symmetric int8 on onnxruntime's grid: one scale per output row (or for the tensor).

    ``scale = max|w| / 127.5`` and ``q = clamp(round(w / scale), -128, 127)``: what
    ``quantize_dynamic`` and ``quantize_static`` store (uint8 with zero point 128, or
    int8), so the torch simulation rounds as the exported graph does, bit for bit.

    Example:
        >>> w = torch.tensor([[0.3, -1.0, 0.25]])
        >>> fake_quantize_int8(w)
        tensor([[ 0.2980, -0.9961,  0.2510]])
    """
    source = weight.float()
    absmax = source.abs().amax(dim=1, keepdim=True) if per_channel else source.abs().amax()
    scale = torch.where(absmax > 0, absmax / ONNX_INT8_RANGE, torch.ones_like(absmax))
    return (torch.clamp(torch.round(source / scale), -INT8_MAX - 1, INT8_MAX) * scale).to(
        weight.dtype
    )


def fake_quantize_int4(
    weight: torch.Tensor, block_size: int = 32, columns: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric int4 with one scale per block of ``block_size`` inputs of each row.

    The grid is ONNX Runtime's ``MatMulNBits`` one (MLAS blockwise quantization), so
    the torch simulation and the exported graph agree: the block's value of largest
    magnitude ``m`` sets ``scale = m / -8``, and every value is rounded to
    ``q · scale`` with ``q`` in ``[-8, 7]`` (the extreme lands exactly on ``-8``).

    ``columns`` (bool, one per input) restricts blocks to the kept inputs, so that a
    matrix with pruned columns is quantized as its physically pruned version would
    be; the other columns are returned as they are (zero, after pruning).

    Example:
        >>> w = torch.arange(1.0, 33.0).reshape(1, 32)
        >>> q = fake_quantize_int4(w, block_size=16)
        >>> q[0, :3], q[0, -1]
        (tensor([0., 2., 4.]), tensor(32.))
    """
    if columns is not None and not bool(columns.all()):
        result = weight.clone()
        result[:, columns] = fake_quantize_int4(weight[:, columns], block_size)
        return result
    source = weight.float()
    rows, width = source.shape
    padded_width = -(-width // block_size) * block_size
    padded = torch.nn.functional.pad(source, (0, padded_width - width))
    blocks = padded.reshape(rows, -1, block_size)
    extreme = blocks.gather(2, blocks.abs().argmax(dim=2, keepdim=True))
    scale = extreme / -8.0
    # Multiplying by the reciprocal, as MLAS does, so values on a half step round alike.
    reciprocal = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    levels = torch.clamp(torch.round(blocks * reciprocal), -8, 7)
    quantized = torch.where(scale != 0, levels * scale, torch.zeros_like(blocks))
    return quantized.reshape(rows, padded_width)[:, :width].to(weight.dtype)


def fake_quantize_fp16(tensor: torch.Tensor) -> torch.Tensor:
    """Round through float16 and back.

    Example:
        >>> fake_quantize_fp16(torch.tensor([1.0001]))
        tensor([1.])
    """
    return tensor.half().to(tensor.dtype)


def fake_quantize_activations(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Symmetric int8 with a calibrated ``scale``; values beyond ±127·scale clip.

    ``scale`` is one number (per tensor) or one per input channel (the last axis).

    The gradient passes straight through, so attribution methods still run.

    Example:
        >>> fake_quantize_activations(torch.tensor([0.01, 0.5, 9.0]), scale=0.05)
        tensor([0.0000, 0.5000, 6.3500])
    """
    if isinstance(scale, torch.Tensor):
        scale = scale.to(device=x.device, dtype=x.dtype)
    quantized = torch.clamp(torch.round(x / scale), -INT8_MAX, INT8_MAX) * scale
    return x + (quantized - x).detach()


def fake_quantize_dynamic_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round ``x`` as ONNX's ``DynamicQuantizeLinear`` does before a dynamic int8 MatMul.

    One asymmetric uint8 scale for the whole tensor, from its minimum and maximum
    with zero always in range: ``scale = (max(x, 0) - min(x, 0)) / 255``, zero point
    ``round(-min / scale)``, values rounded half to even and saturated to [0, 255].
    The gradient passes straight through (for quantization-aware training).

    Example:
        >>> fake_quantize_dynamic_uint8(torch.tensor([-1.0, 0.0, 0.3, 2.0]))
        tensor([-1.0000,  0.0000,  0.3059,  2.0000])
    """
    with torch.no_grad():
        low = torch.clamp(x.amin(), max=0.0)
        high = torch.clamp(x.amax(), min=0.0)
        scale = (high - low) / UINT8_MAX
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.clamp(torch.round(-low / scale), 0, UINT8_MAX)
        rounded = (torch.clamp(torch.round(x / scale) + zero, 0, UINT8_MAX) - zero) * scale
    return x + (rounded - x).detach()
