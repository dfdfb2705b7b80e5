"""An independent NumPy + ml_dtypes reference quantizer for tests.

It shares no code with lightquant: scale exponents come from float64
``frexp``/``log2`` with exact float64 corrections, FP elements from ml_dtypes
casts of the clipped value, and INT elements from ``np.round`` (ties to even).
"""

import math

import ml_dtypes
import numpy as np

ML_DTYPES = {
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e2m1": ml_dtypes.float4_e2m1fn,
}
QMAX = {"int8": 127.0, "int6": 31.0, "int4": 7.0, "e4m3": 448.0, "e5m2": 57344.0,
        "e2m3": 7.5, "e3m2": 28.0, "e2m1": 6.0}


def round_element(y: np.ndarray, element: str, asymmetric: bool = False) -> np.ndarray:
  """Round float64 scaled values onto the element grid (float64 result)."""
  qmax = QMAX[element]
  if element.startswith("int"):
    low = -qmax - 1 if asymmetric else -qmax
    return np.clip(np.round(y), low, qmax)
  clipped = np.clip(y, -qmax, qmax).astype(np.float32)
  return clipped.astype(ML_DTYPES[element]).astype(np.float64)


def ceil_exponent(amax: np.ndarray, qmax: float) -> np.ndarray:
  """Smallest e with qmax * 2^e >= amax, from a float64 log2 and corrections."""
  e = np.ceil(np.log2(amax / qmax))
  e = np.where(amax > qmax * np.exp2(e), e + 1, e)
  e = np.where(amax <= qmax * np.exp2(e - 1), e - 1, e)
  return e


def ocp_exponent(amax: np.ndarray, qmax: float) -> np.ndarray:
  """floor(log2 amax) - floor(log2 qmax), both from float64 frexp."""
  return np.frexp(amax)[1] - 1.0 - (math.frexp(qmax)[1] - 1)


def fake_quant(x: np.ndarray, element: str, block_size: int, scale_rule: str,
               axis: int = -1, asymmetric: bool = False) -> np.ndarray:
  """Reference quantize-dequantize of float32 `x` along `axis`.

  Supports block_size > 0 (zero-padded ragged blocks) or -1 (per-channel),
  and scale rules "ceil", "ocp", "fp32" and "nv".
  """
  x = np.moveaxis(np.asarray(x, np.float32), axis, -1)
  n = x.shape[-1]
  g = n if block_size == -1 else block_size
  nb = -(-n // g)
  padded = np.zeros(x.shape[:-1] + (nb * g,), np.float32)
  padded[..., :n] = x
  xb = padded.reshape(x.shape[:-1] + (nb, g))
  amax = np.max(np.abs(xb), axis=-1, keepdims=True).astype(np.float64)
  qmax = QMAX[element]

  if scale_rule in ("ceil", "ocp"):
    with np.errstate(divide="ignore"):
      rule = ceil_exponent if scale_rule == "ceil" else ocp_exponent
      e = np.where(amax > 0, rule(np.where(amax > 0, amax, 1.0), qmax), -127)
    e = np.clip(e, -127, 127)
    scale = np.exp2(e)
    y = xb.astype(np.float64) / scale
  elif scale_rule == "fp32":
    scale = (amax.astype(np.float32) / np.float32(qmax)).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
      y = np.where(scale > 0, xb / scale, 0.0).astype(np.float32).astype(np.float64)
  elif scale_rule == "nv":
    block_scale = (amax.astype(np.float32) / np.float32(qmax)).astype(np.float32)
    tensor_scale = np.float32(np.max(block_scale) / np.float32(448.0))
    with np.errstate(invalid="ignore", divide="ignore"):
      ratio = np.where(tensor_scale > 0, block_scale / tensor_scale, 0).astype(np.float32)
      code = np.minimum(ratio, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
      scale = (tensor_scale * code).astype(np.float32)
      y = np.where(scale > 0, xb / scale, 0.0).astype(np.float32).astype(np.float64)
  else:
    raise ValueError(f"reference does not implement scale rule {scale_rule!r}")

  q = round_element(y, element, asymmetric)
  x_hat = (q * scale).astype(np.float32)
  x_hat = x_hat.reshape(x.shape[:-1] + (nb * g,))[..., :n]
  return np.moveaxis(x_hat, -1, axis)
