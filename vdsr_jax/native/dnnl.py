"""oneDNN 3x3 convolutions as XLA FFI custom calls, with their gradients.

`conv3x3(x, kernel)` runs the forward convolution, and its VJP the input and
weight gradients, as oneDNN primitives (`dnnl_conv.cc`), float32, NHWC/HWIO,
zero 'SAME' padding. On the 2-core AVX-512 benchmark machine this is what
PyTorch's CPU convolutions run too, ~2.4x faster than XLA:CPU's own for
VDSR's 64 -> 64 layers on 41x41 patches (benchmarks/RESULTS.md).
"""

import ctypes
import functools
import hashlib
import logging
import pathlib
from typing import Optional

import jax
import jax.numpy as jnp

_HERE = pathlib.Path(__file__).resolve().parent
SOURCE = _HERE / 'dnnl_conv.cc'
# Every source of the library: the oneDNN handlers and the Winograd kernels
# (winograd_conv.cc, wrapped by vdsr_jax.native.winograd).
SOURCES = (SOURCE, _HERE / 'winograd_conv.cc')
# Written by `python -m vdsr_jax.native.build`, with its stamp beside it.
LIBRARY = _HERE / '_dnnl_conv.so'


def source_hash() -> str:
  """sha256 of the sources, recorded by the build and checked on load."""
  digest = hashlib.sha256()
  for source in SOURCES:
    digest.update(hashlib.sha256(source.read_bytes()).digest())
  return digest.hexdigest()


def stamp_path(library) -> pathlib.Path:
  """Where the build records which source `library` was built from."""
  return pathlib.Path(str(library) + '.sha256')

_TARGETS = {
    'vdsr_dnnl_conv_fwd': 'VdsrDnnlConvFwd',
    'vdsr_dnnl_conv_bias_relu_fwd': 'VdsrDnnlConvBiasReluFwd',
    'vdsr_dnnl_conv_bwd_data': 'VdsrDnnlConvBwdData',
    'vdsr_dnnl_conv_bwd_weights': 'VdsrDnnlConvBwdWeights',
    'vdsr_winograd_fwd': 'VdsrWinogradFwd',
    'vdsr_winograd_bwd_data': 'VdsrWinogradBwdData',
    'vdsr_winograd_bwd_weights': 'VdsrWinogradBwdWeights',
}


@functools.lru_cache(maxsize=None)
def _library(path: str) -> Optional[ctypes.CDLL]:
  """Loads the built kernels and registers the FFI targets; None if absent."""
  if not pathlib.Path(path).is_file():
    logging.warning(
        'vdsr_jax: the oneDNN convolution kernels are not built (%s is '
        'missing), so CPU convolutions use XLA\'s own (same results, ~2-3x '
        'slower training). Build them with `python -m vdsr_jax.native.build`.',
        path)
    return None
  rebuild = 'Rebuild it with `python -m vdsr_jax.native.build`.'
  stamp = stamp_path(path)
  built_from = stamp.read_text().strip() if stamp.is_file() else None
  if built_from != source_hash():
    raise RuntimeError(f'{path} was built from other versions of '
                       f'{", ".join(src.name for src in SOURCES)} '
                       f'(or its {stamp.name} is missing). {rebuild}')
  try:
    lib = ctypes.CDLL(path)
  except OSError as e:
    raise RuntimeError(f'{path} could not be loaded ({e}). {rebuild}') from e
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform='cpu')
  return lib


def available() -> bool:
  """True if the kernels are built and registered (loading them if needed)."""
  return _library(str(LIBRARY)) is not None


def winograd_supported() -> bool:
  """True if the Winograd kernels are built and this CPU has AVX-512F."""
  lib = _library(str(LIBRARY))
  return lib is not None and bool(lib.VdsrWinogradSupported())


def _lib() -> ctypes.CDLL:
  lib = _library(str(LIBRARY))
  if lib is None:
    raise RuntimeError('The oneDNN kernels are not built: run '
                       '`python -m vdsr_jax.native.build`.')
  return lib


def impl_info(n: int, h: int, w: int, cin: int, cout: int) -> str:
  """oneDNN's implementation names 'fwd|bwd_data|bwd_weights|fused_fwd'."""
  buf = ctypes.create_string_buffer(1024)
  args = [ctypes.c_int64(v) for v in (n, h, w, cin, cout)]
  rc = _lib().VdsrDnnlImplInfo(*args, buf, ctypes.c_int64(len(buf)))
  if rc != 0:
    raise RuntimeError(f'oneDNN: {buf.value.decode()}')
  return buf.value.decode()


def _call(target: str, shape, *args) -> jax.Array:
  _lib()
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method='sequential')(*args)


def _check(x: jax.Array, kernel: jax.Array) -> None:
  if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
    raise TypeError('oneDNN conv3x3 is float32 only, got '
                    f'{x.dtype} activations and a {kernel.dtype} kernel.')
  if x.ndim != 4 or kernel.shape[:2] != (3, 3) or kernel.ndim != 4 or (
      x.shape[-1] != kernel.shape[2]):
    raise ValueError('Expected (N, H, W, Cin) activations and a (3, 3, Cin, '
                     f'Cout) kernel, got {x.shape} and {kernel.shape}.')


@jax.custom_vjp
def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """3x3 'SAME' convolution (N, H, W, Cin) * (3, 3, Cin, Cout) by oneDNN."""
  _check(x, kernel)
  return _call('vdsr_dnnl_conv_fwd', x.shape[:3] + kernel.shape[3:], x, kernel)


def _fwd(x, kernel):
  return conv3x3(x, kernel), (x, kernel)


def _bwd(res, dy):
  x, kernel = res
  dx = _call('vdsr_dnnl_conv_bwd_data', x.shape, dy, kernel)
  dw = _call('vdsr_dnnl_conv_bwd_weights', kernel.shape, x, dy)
  return dx, dw


conv3x3.defvjp(_fwd, _bwd)


@jax.custom_vjp
def conv3x3_bias_relu(x: jax.Array, kernel: jax.Array,
                      bias: jax.Array) -> jax.Array:
  """relu(conv3x3(x, kernel) + bias) in one oneDNN primitive (ReLU post-op)."""
  _check(x, kernel)
  if bias.dtype != jnp.float32 or bias.shape != kernel.shape[3:]:
    raise ValueError(f'Expected a float32 bias of shape {kernel.shape[3:]}, '
                     f'got {bias.dtype} {bias.shape}.')
  return _call('vdsr_dnnl_conv_bias_relu_fwd', x.shape[:3] + kernel.shape[3:],
               x, kernel, bias)


def _fused_fwd(x, kernel, bias):
  y = conv3x3_bias_relu(x, kernel, bias)
  return y, (x, kernel, y)


def _fused_bwd(res, dy):
  x, kernel, y = res
  g = jnp.where(y > 0, dy, 0.0)  # ReLU's gradient (0 at 0, as jax.nn.relu)
  dx, dw = _bwd((x, kernel), g)
  return dx, dw, jnp.sum(g, axis=(0, 1, 2))


conv3x3_bias_relu.defvjp(_fused_fwd, _fused_bwd)

