"""Depthwise convolution and max-pooling written as shifted slices.

XLA:CPU runs `lax.conv_general_dilated` with feature_group_count = channels
(depthwise: MobileNet, GhostNet, ShuffleNet) and the gradient of
`lax.reduce_window` max-pooling (select-and-scatter) far below the machine's
speed: the same values computed as a sum of shifted, scaled slices (depthwise
conv) or a max of strided slices (max-pool) run an order of magnitude or more
faster (measurements: benchmarks/RESULTS.md). The functions here compute the
same values (up to float summation order for the convolution) from
elementwise ops and reductions, which XLA fuses into single loops; their
custom gradients equal lax's (the max-pool's goes to the first maximum of
each window, exactly as select-and-scatter does).

`conv_general_dilated` is a drop-in for `lax.conv_general_dilated` (flax's
`nn.Conv(conv_general_dilated=...)` field): depthwise NHWC/HWIO calls take
the shifted-slice path, everything else goes to lax unchanged. The parameter
shapes and names of the models do not change, so checkpoints are the same
either way.

Inside `standard_ops()` both trace as lax's own convolution and
reduce_window instead, for converters to other runtimes (TFLite).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


_STANDARD_OPS = contextvars.ContextVar("kd_jax_standard_ops", default=False)


@contextlib.contextmanager
def standard_ops():
  """Traces depthwise convs and max-pools as lax's convolution and
  reduce_window, the max-pool padded with its input's minimum.

  A converter to another runtime (TFLite) maps those ops onto the runtime's
  depthwise-conv and pooling kernels, where the shifted-slice forms would
  stay dozens of elementwise ops; and -inf padding would give an int8
  quantiser an infinite calibration range, while any value at most the
  input's minimum leaves every window's max unchanged. Same values."""
  token = _STANDARD_OPS.set(True)
  try:
    yield
  finally:
    _STANDARD_OPS.reset(token)


def _pairs(padding, kernel_hw):
  if isinstance(padding, str):
    return None  # "SAME"/"VALID" strings: leave them to lax
  pads = tuple(tuple(int(p) for p in pair) for pair in padding)
  return pads if len(pads) == len(kernel_hw) else None


def _is_unit(dilation):
  return dilation is None or all(d == 1 for d in dilation)


def _pad(x_BxHxWxC, pads, value=0.0):
  (pt, pb), (pl, pr) = pads
  return jnp.pad(x_BxHxWxC, ((0, 0), (pt, pb), (pl, pr), (0, 0)),
                 constant_values=jnp.array(value, x_BxHxWxC.dtype))


def _out_hw(xp, window, strides):
  """Output height and width of a VALID window over the padded input."""
  return tuple((n - k) // s + 1 for n, k, s in zip(xp.shape[1:3], window, strides))


def _taps(xp, kh, kw, strides, out_hw):
  """The Kh*Kw shifted, strided (B, Ho, Wo, C) windows of a padded input."""
  b, _, _, c = xp.shape
  (sh, sw), (ho, wo) = strides, out_hw
  for i in range(kh):
    for j in range(kw):
      yield i, j, lax.slice(xp, (0, i, j, 0),
                            (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                            (1, sh, sw, 1))


def _depthwise_forward(x_BxHxWxC, w_KhxKwxC, strides, padding):
  kh, kw = w_KhxKwxC.shape[:2]
  xp = _pad(x_BxHxWxC, padding)
  out_hw = _out_hw(xp, (kh, kw), strides)
  out = None
  for i, j, tap in _taps(xp, kh, kw, strides, out_hw):
    term = tap * w_KhxKwxC[i, j]
    out = term if out is None else out + term
  return out


def _chunk_size(batch, bytes_per_example, target_bytes=1 << 20):
  """The largest divisor of `batch` whose examples fit in ~target_bytes."""
  limit = max(1, target_bytes // max(1, bytes_per_example))
  return max(d for d in range(1, min(batch, limit) + 1) if batch % d == 0)


def _depthwise_kernel_grad(x_BxHxWxC, g_BxHoxWoxC, kh, kw, strides, padding):
  """d loss / d kernel: per tap, sum over (B, Ho, Wo) of window * g.

  Summed chunk by chunk of the batch in a `lax.scan`: XLA:CPU runs one
  reduction of a shifted slice over the whole batch several times slower
  than the same reductions over cache-sized chunks (benchmarks/RESULTS.md).
  """
  xp = _pad(x_BxHxWxC, padding)
  b, hp, wp, c = xp.shape
  out_hw = g_BxHoxWoxC.shape[1:3]
  chunk = _chunk_size(b, hp * wp * c * xp.dtype.itemsize)
  n = b // chunk
  xs = xp.reshape(n, chunk, hp, wp, c)
  gs = g_BxHoxWoxC.reshape(n, chunk, *out_hw, c)

  def body(acc_KhxKwxC, xg):
    xc, gc = xg
    sums = [jnp.sum(tap * gc, axis=(0, 1, 2), dtype=jnp.float32)
            for _, _, tap in _taps(xc, kh, kw, strides, out_hw)]
    return acc_KhxKwxC + jnp.stack(sums).reshape(kh, kw, c), None

  acc = jnp.zeros((kh, kw, c), jnp.float32)
  return lax.scan(body, acc, (xs, gs))[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x_BxHxWxC, w_KhxKwxC, strides, padding):
  return _depthwise_forward(x_BxHxWxC, w_KhxKwxC, strides, padding)


def _depthwise_fwd(x, w, strides, padding):
  return _depthwise_forward(x, w, strides, padding), (x, w)


def _depthwise_bwd(strides, padding, res, g):
  x, w = res
  _, x_vjp = jax.vjp(lambda x: _depthwise_forward(x, w, strides, padding), x)
  (dx,) = x_vjp(g)
  dw = _depthwise_kernel_grad(x, g, w.shape[0], w.shape[1], strides, padding)
  return dx, dw.astype(w.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv_nhwc(x_BxHxWxC, kernel_KhxKwx1xC, strides=(1, 1),
                        padding=((0, 0), (0, 0))):
  """Depthwise conv (channel multiplier 1) as a sum of Kh*Kw shifted slices."""
  strides = tuple(int(s) for s in strides)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  return _depthwise(x_BxHxWxC, kernel_KhxKwx1xC[:, :, 0, :], strides, padding)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, with NHWC depthwise convs as shifted slices."""
  pads = _pairs(padding, rhs.shape[:2])
  depthwise = (not _STANDARD_OPS.get() and jax.default_backend() == "cpu"
               and lhs.ndim == 4
               and dimension_numbers == _NHWC and feature_group_count > 1
               and feature_group_count == lhs.shape[3] == rhs.shape[3]
               and rhs.shape[2] == 1 and batch_group_count == 1
               and pads is not None and _is_unit(lhs_dilation)
               and _is_unit(rhs_dilation) and preferred_element_type is None)
  if depthwise:
    return depthwise_conv_nhwc(lhs, rhs, tuple(window_strides), pads)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)


def _window_taps(xp, window, strides, out_hw):
  """The Kh*Kw strided windows of a padded pooling input, row-major."""
  return [tap for _, _, tap in _taps(xp, *window, strides, out_hw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool(x_BxHxWxC, window, strides, pads, in_hw):
  del in_hw  # x's (H, W), static for the backward pass
  xp = _pad(x_BxHxWxC, pads, -jnp.inf)
  return functools.reduce(jnp.maximum, _window_taps(
      xp, window, strides, _out_hw(xp, window, strides)))


def _max_pool_fwd(x, window, strides, pads, in_hw):
  """The max and, per output, the window position of its first maximum
  (row-major; Kh*Kw when none equals it, e.g. a NaN max): the backward pass
  reads only this index (int8, int32 past 126 taps), not x and y again."""
  xp = _pad(x, pads, -jnp.inf)
  taps = _window_taps(xp, window, strides, _out_hw(xp, window, strides))
  y = functools.reduce(jnp.maximum, taps)
  dtype = jnp.int8 if len(taps) < 127 else jnp.int32
  first_BxHoxWoxC = jnp.full(y.shape, len(taps), dtype)
  for k in reversed(range(len(taps))):
    first_BxHoxWoxC = jnp.where(taps[k] == y, dtype(k), first_BxHoxWoxC)
  return y, first_BxHoxWoxC


def _max_pool_bwd(window, strides, pads, in_hw, first, g_BxHoxWoxC):
  """Each output's gradient goes to the first maximum of its window (in
  row-major window order), as select-and-scatter does. It reads the saved
  first-maximum index instead of recomputing the masks from x and y, because
  XLA would re-evaluate the whole mask chain for each of the Kh*Kw scattered
  terms inside one fused loop."""
  out_hw = first.shape[1:3]
  (pt, pb), (pl, pr) = pads
  (b, _, _, c), (h, w) = first.shape, in_hw
  parts = [jnp.where(first == k, g_BxHoxWoxC, jnp.zeros_like(g_BxHoxWoxC))
           for k in range(window[0] * window[1])]
  xp0 = jnp.zeros((b, h + pt + pb, w + pl + pr, c), g_BxHoxWoxC.dtype)
  _, taps_vjp = jax.vjp(lambda xp: _window_taps(xp, window, strides, out_hw), xp0)
  (dxp,) = taps_vjp(parts)
  return (dxp[:, pt:pt + h, pl:pl + w, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x_BxHxWxC, window, strides, padding="VALID"):
  """`nn.max_pool` for NHWC inputs, as the max of shifted strided slices.

  Same values as `nn.max_pool` (-inf padding, floor mode); the gradient goes
  to the first maximum of each window, as XLA's select-and-scatter does.
  """
  if padding == "VALID":
    pads = ((0, 0), (0, 0))
  elif isinstance(padding, str):
    return nn.max_pool(x_BxHxWxC, window, strides=strides, padding=padding)
  else:
    pads = tuple(tuple(int(p) for p in pair) for pair in padding)
  if _STANDARD_OPS.get():
    xp = _pad(x_BxHxWxC, pads, jnp.min(x_BxHxWxC)) if any(
        p for pair in pads for p in pair) else x_BxHxWxC
    return lax.reduce_window(xp, -jnp.inf, lax.max, (1, *window, 1),
                             (1, *strides, 1), "VALID")
  return _max_pool(x_BxHxWxC, tuple(int(k) for k in window),
                   tuple(int(s) for s in strides), pads, x_BxHxWxC.shape[1:3])
