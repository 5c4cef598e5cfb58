"""oneDNN 3x3 convolutions as XLA FFI custom calls, with their gradients.

`conv3x3(x, kernel)` runs the forward convolution, and its VJP the input and
weight gradients, as oneDNN primitives (`dnnl_conv.cc`), float32, NHWC/HWIO,
zero 'SAME' padding. On the 2-core AVX-512 benchmark machine this is what
PyTorch's CPU convolutions run too, ~2.4x faster than XLA:CPU's own for
VDSR's 64 -> 64 layers on 41x41 patches (benchmarks/RESULTS.md).

This module also owns the native library itself (`_dnnl_conv.so`, built
from `SOURCES` by `python -m vdsr_jax.native.build`): loading it, checking
that it was built from these sources, registering every FFI target (the
Winograd ones of `vdsr_jax.native.winograd` too) and `call`ing them.
"""

import ctypes
import functools
import hashlib
import logging
import pathlib
from typing import Optional

import jax
import jax.numpy as jnp

from vdsr_jax.native import conv_ops

_HERE = pathlib.Path(__file__).resolve().parent
SOURCE = _HERE / 'dnnl_conv.cc'
# Every source of the library: the oneDNN handlers and the Winograd kernels
# (winograd_conv.cc and the SIMD code it compiles twice, wrapped by
# vdsr_jax.native.winograd). Only the .cc files are compiled.
SOURCES = (SOURCE, _HERE / 'winograd_conv.cc', _HERE / 'winograd_kernels.inc')
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
    'vdsr_winograd_fwd_masked': 'VdsrWinogradFwdMasked',
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


# The Winograd kernels' instruction sets, by their vector width in bits.
WINOGRAD_ISAS = {'avx512': 512, 'avx2': 256}


def winograd_isa() -> Optional[str]:
  """'avx512' or 'avx2': the Winograd kernels that run here; None if none.

  The widest this CPU has (AVX-512F, else AVX2 + FMA) unless
  `use_winograd_isa` chose; None if the kernels are not built or the CPU has
  neither.
  """
  lib = _library(str(LIBRARY))
  bits = 0 if lib is None else lib.VdsrWinogradIsa()
  return {v: k for k, v in WINOGRAD_ISAS.items()}.get(bits)


def winograd_supported() -> bool:
  """True if the Winograd kernels are built and this CPU can run them."""
  return winograd_isa() is not None


def use_winograd_isa(isa: str) -> None:
  """Makes the Winograd kernels run the `isa` ('avx512'/'avx2') code.

  For tests and benchmarks of one against the other on a CPU that has both
  (their results differ in rounding only). Takes effect for every later
  call, compiled or not; not to be called while one runs.
  """
  if isa not in WINOGRAD_ISAS:
    raise ValueError(f'Unknown Winograd instruction set {isa!r}; expected '
                     f'one of {sorted(WINOGRAD_ISAS)}.')
  if not _lib().VdsrWinogradUseIsa(WINOGRAD_ISAS[isa]):
    raise RuntimeError(f'This CPU cannot run the {isa} Winograd kernels.')


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


def call(target: str, shape, *args, **attrs) -> jax.Array:
  """Calls one of the library's FFI targets (loading it first): float32."""
  _lib()
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method='sequential')(*args, **attrs)


def _forward(x, kernel, bias):
  shape = x.shape[:3] + kernel.shape[3:]
  if bias is None:
    return call('vdsr_dnnl_conv_fwd', shape, x, kernel)
  return call('vdsr_dnnl_conv_bias_relu_fwd', shape, x, kernel, bias)


conv3x3, conv3x3_bias_relu = conv_ops.make_conv3x3(
    'oneDNN', _forward,
    input_grad=lambda dy, kernel: call(
        'vdsr_dnnl_conv_bwd_data', dy.shape[:3] + kernel.shape[2:3], dy,
        kernel),
    weight_grad=lambda x, dy: call(
        'vdsr_dnnl_conv_bwd_weights', (3, 3, x.shape[-1], dy.shape[-1]), x,
        dy))
