"""Numerics of every 3x3 convolution path against a float64 reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdsr_jax import conv
from vdsr_jax import models
from vdsr_jax.native import build
from vdsr_jax.native import dnnl
from vdsr_jax.native import winograd


def _conv64(x, w):
  """float64 numpy 'SAME' 3x3 correlation, NHWC x HWIO."""
  n, h, wd, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(xp[:, i:i + h, j:j + wd] @ w[i, j] for i in range(3)
             for j in range(3))


def _conv64_vjp(x, w, dy):
  """float64 gradients (dx, dw) of sum(conv(x, w) * dy)."""
  n, h, wd, _ = x.shape
  dx = _conv64(dy, np.transpose(w[::-1, ::-1], (0, 1, 3, 2)))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dw = np.stack([np.stack([
      np.einsum('nhwc,nhwo->co', xp[:, i:i + h, j:j + wd], dy)
      for j in range(3)]) for i in range(3)])
  return dx, dw


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


# The Winograd kernels' instruction sets this CPU has: both where it has
# AVX-512F (which implies AVX2), so that such a CPU tests the AVX2 code too.
with open('/proc/cpuinfo') as _f:
  _CPU_FLAGS = set(_f.read().split())
CPU_WINOGRAD_ISAS = [isa for isa, needs in (('avx512', {'avx512f'}),
                                            ('avx2', {'avx2', 'fma'}))
                     if needs <= _CPU_FLAGS]


@pytest.fixture(params=CPU_WINOGRAD_ISAS)
def winograd_isa(request):
  """Runs the test with the Winograd kernels of each instruction set."""
  default = dnnl.winograd_isa()
  dnnl.use_winograd_isa(request.param)
  yield request.param
  dnnl.use_winograd_isa(default)


def _data(shape, cout, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape)
  w = rng.standard_normal((3, 3, shape[-1], cout)) / np.sqrt(9 * shape[-1])
  dy = rng.standard_normal(shape[:-1] + (cout,))
  return x, w, dy


# 'native_winograd' needs channel counts in multiples of 16: tested below.
@pytest.mark.parametrize('method', [m for m in conv.METHODS
                                    if m != 'native_winograd'])
@pytest.mark.parametrize('shape,cout', [((2, 7, 9, 5), 6),
                                        ((1, 5, 4, 3), 1),
                                        ((3, 6, 6, 1), 4)])
def test_matches_float64_reference(method, shape, cout):
  x, w, dy = _data(shape, cout)
  f = jax.jit(lambda x, w: conv.conv3x3(x, w, method=method))
  y, vjp = jax.vjp(f, jnp.float32(x), jnp.float32(w))
  dx, dw = vjp(jnp.float32(dy))
  assert y.dtype == jnp.float32 and y.shape == dy.shape
  ref_dx, ref_dw = _conv64_vjp(x, w, dy)
  assert _rel(y, _conv64(x, w)) < 1e-4
  assert _rel(dx, ref_dx) < 1e-3
  assert _rel(dw, ref_dw) < 1e-3


@pytest.mark.parametrize('shape,cout', [((2, 7, 9, 16), 32),
                                        ((1, 1, 1, 32), 16),
                                        ((3, 2, 3, 16), 16),
                                        ((1, 13, 6, 48), 64),
                                        ((2, 4, 8, 64), 80)])
def test_native_winograd_matches_float64_reference(shape, cout,
                                                   winograd_isa):
  # Image sizes below, at and above one 4x4 tile, partial border tiles, and
  # every register block width of the GEMMs (16..80 output channels).
  assert dnnl.winograd_isa() == winograd_isa
  x, w, dy = _data(shape, cout)
  f = jax.jit(lambda x, w: conv.conv3x3(x, w, method='native_winograd'))
  y, vjp = jax.vjp(f, jnp.float32(x), jnp.float32(w))
  dx, dw = vjp(jnp.float32(dy))
  ref_dx, ref_dw = _conv64_vjp(x, w, dy)
  assert y.shape == dy.shape and dx.shape == x.shape and dw.shape == w.shape
  assert _rel(y, _conv64(x, w)) < 1e-5
  assert _rel(dx, ref_dx) < 1e-5
  assert _rel(dw, ref_dw) < 1e-5


def test_native_winograd_errors():
  with pytest.raises(ValueError, match='multiples of 16, got 8 -> 16'):
    winograd.conv3x3(jnp.ones((1, 4, 4, 8)), jnp.ones((3, 3, 8, 16)))
  with pytest.raises(ValueError, match='multiples of 16, got 16 -> 1'):
    conv.conv3x3(jnp.ones((1, 4, 4, 16)), jnp.ones((3, 3, 16, 1)),
                 method='native_winograd')
  with pytest.raises(TypeError, match='float32 only'):
    winograd.conv3x3(jnp.ones((1, 4, 4, 16), jnp.bfloat16),
                     jnp.ones((3, 3, 16, 16), jnp.bfloat16))
  with pytest.raises(ValueError, match=r'\(3, 3, Cin, Cout\)'):
    winograd.conv3x3(jnp.ones((1, 4, 4, 16)), jnp.ones((3, 3, 32, 16)))
  with pytest.raises(ValueError, match='float32 bias of shape'):
    winograd.conv3x3_bias_relu(jnp.ones((1, 4, 4, 16)),
                               jnp.ones((3, 3, 16, 16)), jnp.ones((2,)))


@pytest.mark.parametrize('method', ['dnnl', 'native_winograd', 'shift',
                                    'winograd2', 'winograd4'])
def test_vdsr_sized_layer(method):
  # Odd 41x41 patches, VDSR's hidden width; F(4x4) is the least accurate.
  cout = 1 if method == 'shift' else 64
  x, w, _ = _data((2, 41, 41, 64), cout, seed=1)
  x = np.maximum(x, 0)
  y = jax.jit(lambda x, w: conv.conv3x3(x, w, method=method))(
      jnp.float32(x), jnp.float32(w))
  assert _rel(y, _conv64(x, w)) < 1e-5


@pytest.mark.parametrize('method,cin,cout', [('shift', 3, 2), ('dnnl', 3, 2),
                                             ('native_winograd', 16, 32)])
def test_bias_and_vmap(method, cin, cout):
  x, w, _ = _data((4, 2, 5, 6, cin), cout)
  b = np.arange(float(cout))
  f = jax.vmap(lambda x: conv.conv3x3(x, jnp.float32(w), jnp.float32(b),
                                      method=method))
  y = jax.jit(f)(jnp.float32(x))
  ref = np.stack([_conv64(xi, w) + b for xi in x])
  assert _rel(y, ref) < 1e-4


def test_native_kernels_are_built():
  # .ci/run and the README's install build them; 'auto' relies on them.
  assert dnnl.available(), (
      f'{dnnl.LIBRARY} missing: run `python -m vdsr_jax.native.build`.')
  # oneDNN's optimised kernels, not its slow reference implementation, for
  # VDSR's training layers and a whole-image inference layer.
  for shape in [(64, 41, 41, 64, 64), (64, 41, 41, 1, 64),
                (64, 41, 41, 64, 1), (1, 512, 512, 64, 64)]:
    infos = dnnl.impl_info(*shape).split('|')
    assert len(infos) == 4
    for info in infos:
      assert 'ref' not in info, (shape, info)
  # The Winograd kernels run on AVX-512F or AVX2 + FMA, the widest there is.
  assert dnnl.winograd_isa() == (CPU_WINOGRAD_ISAS or [None])[0]
  assert dnnl.winograd_supported() == bool(CPU_WINOGRAD_ISAS)
  with pytest.raises(ValueError, match='Unknown Winograd instruction set'):
    dnnl.use_winograd_isa('sse2')
  # An instruction set this CPU lacks is refused and changes nothing.
  for isa in sorted(set(dnnl.WINOGRAD_ISAS) - set(CPU_WINOGRAD_ISAS)):
    with pytest.raises(RuntimeError, match=f'cannot run the {isa}'):
      dnnl.use_winograd_isa(isa)
    assert dnnl.winograd_isa() == (CPU_WINOGRAD_ISAS or [None])[0]


def test_auto_method_choice(monkeypatch):
  on_cpu = jax.default_backend() == 'cpu'
  wino = 'native_winograd' if dnnl.winograd_supported() else 'dnnl'
  assert conv.resolve_method(64, 64, 'auto') == (wino if on_cpu else 'lax')
  assert conv.resolve_method(16, 16, 'auto') == (wino if on_cpu else 'lax')
  assert conv.resolve_method(1, 64, 'auto') == ('dnnl' if on_cpu else 'lax')
  assert conv.resolve_method(64, 1, 'auto') == ('dnnl' if on_cpu else 'lax')
  assert conv.resolve_method(64, 24, 'auto') == ('dnnl' if on_cpu else 'lax')
  # oneDNN is float32 only; other dtypes keep XLA's paths.
  assert conv.resolve_method(64, 64, 'auto', jnp.bfloat16) == 'lax'
  assert conv.resolve_method(64, 1, 'auto', jnp.bfloat16) == (
      'shift' if on_cpu else 'lax')
  # Without the built kernels, 'auto' falls back to XLA's paths.
  monkeypatch.setattr(dnnl, 'winograd_supported', lambda: False)
  assert conv.resolve_method(64, 64, 'auto') == (
      'dnnl' if on_cpu else 'lax')
  monkeypatch.setattr(dnnl, 'available', lambda: False)
  assert conv.resolve_method(64, 64, 'auto') == 'lax'
  assert conv.resolve_method(64, 1, 'auto') == ('shift' if on_cpu else 'lax')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert conv.resolve_method(64, 1, 'auto') == 'lax'
  assert conv.resolve_method(64, 1, 'winograd2') == 'winograd2'
  with pytest.raises(ValueError, match='Unknown conv method'):
    conv.conv3x3(jnp.ones((1, 3, 3, 1)), jnp.ones((3, 3, 1, 1)),
                 method='nope')


def test_conv3x3_module_is_nn_conv():
  x = jnp.asarray(np.random.default_rng(0).random((2, 6, 7, 3)), jnp.float32)
  ours = conv.Conv3x3(features=4, bias_init=nn.initializers.normal(1.0))
  theirs = nn.Conv(4, (3, 3), padding='SAME',
                   bias_init=nn.initializers.normal(1.0))
  p_ours = ours.init(jax.random.PRNGKey(0), x)
  p_theirs = theirs.init(jax.random.PRNGKey(0), x)
  jax.tree.map(np.testing.assert_array_equal, p_ours, p_theirs)
  np.testing.assert_allclose(ours.apply(p_ours, x), theirs.apply(p_ours, x),
                             rtol=1e-5, atol=1e-5)


def _vdsr64(params, x, mask, target):
  """float64 numpy VDSR: output and gradients of mean((out - target)^2)."""
  n = len(params)
  ws = [np.float64(params[f'conv{i}']['kernel']) for i in range(n)]
  bs = [np.float64(params[f'conv{i}']['bias']) for i in range(n)]
  acts, pres = [x], []
  for i in range(n):
    pre = _conv64(acts[-1], ws[i]) + bs[i]
    pres.append(pre)
    if i < n - 1:
      acts.append(np.maximum(pre, 0) * mask)
  out = x + pres[-1]
  dh = 2 * (out - target) / out.size
  grads = {}
  for i in reversed(range(n)):
    da, dw = _conv64_vjp(acts[i], ws[i], dh)
    grads[f'conv{i}'] = {'kernel': dw, 'bias': dh.sum(axis=(0, 1, 2))}
    if i > 0:
      dh = da * mask * (pres[i - 1] > 0)
  return out, grads


@pytest.mark.parametrize('method', ['auto', 'lax', 'dnnl', 'shift',
                                    'winograd2'])
def test_vdsr_with_mask_forward_and_grad(method, monkeypatch):
  monkeypatch.setattr(conv, 'METHOD', method)
  model = models.VDSR(depth=4, features=16)
  params = models.init_params(jax.random.PRNGKey(0), model, 9)
  params = jax.tree.map(lambda p: p + 0.01, params)
  rng = np.random.default_rng(2)
  x = rng.random((2, 11, 13, 1))
  mask = np.ones_like(x)
  mask[:, 9:] = 0
  mask[:, :, 10:] = 0
  ref_out, ref_grads = _vdsr64(params, x, mask, 0.5)

  def loss(p):
    out = model.apply({'params': p}, jnp.float32(x), jnp.float32(mask))
    return jnp.mean(jnp.square(out - 0.5)), out

  grads, out = jax.jit(jax.grad(loss, has_aux=True))(params)
  assert _rel(out, ref_out) < 1e-4
  for k in params:
    for name in ('kernel', 'bias'):
      assert _rel(grads[k][name], ref_grads[k][name]) < 1e-3, (k, name)
  if method == 'auto' and dnnl.winograd_supported():
    # The two 16 -> 16 layers multiply the mask in inside the Winograd
    # kernel (no separate pass); the first (1 -> 16) by XLA.
    jaxpr = str(jax.make_jaxpr(loss)(params))
    assert jaxpr.count('vdsr_winograd_fwd_masked') == 2


def test_dnnl_errors():
  with pytest.raises(TypeError, match='float32 only'):
    dnnl.conv3x3(jnp.ones((1, 4, 4, 2), jnp.bfloat16),
                 jnp.ones((3, 3, 2, 2), jnp.bfloat16))
  with pytest.raises(ValueError, match=r'\(3, 3, Cin, Cout\)'):
    dnnl.conv3x3(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 3, 2)))


def test_native_build_writes_library_and_stamp(tmp_path):
  out = build.build(tmp_path / 'k.so')
  assert out.stat().st_size > 0 and not list(tmp_path.glob('*.tmp'))
  assert (tmp_path / 'k.so.sha256').read_text().strip() == dnnl.source_hash()
  with pytest.raises(build.BuildError, match='not found on PATH'):
    build.build(tmp_path / 'other.so', compiler='no-such-compiler')
  assert not (tmp_path / 'other.so').exists()


def test_native_stale_or_broken_library_is_refused(tmp_path):
  stale = tmp_path / 'stale.so'
  stale.write_bytes(dnnl.LIBRARY.read_bytes())
  with pytest.raises(RuntimeError, match='other versions'):
    dnnl._library(str(stale))  # no stamp
  (tmp_path / 'stale.so.sha256').write_text('0' * 64)
  with pytest.raises(RuntimeError, match='other versions.*Rebuild'):
    dnnl._library(str(stale))
  broken = tmp_path / 'broken.so'
  broken.write_bytes(b'not a shared library')
  (tmp_path / 'broken.so.sha256').write_text(dnnl.source_hash())
  with pytest.raises(RuntimeError, match='could not be loaded.*Rebuild'):
    dnnl._library(str(broken))


@pytest.mark.parametrize('method,cin,cout', [('dnnl', 5, 6), ('lax', 5, 6),
                                             ('shift', 5, 6),
                                             ('native_winograd', 16, 32)])
def test_fused_bias_relu_matches_reference(method, cin, cout):
  x, w, dy = _data((2, 9, 11, cin), cout, seed=3)
  b = np.linspace(-0.5, 0.5, cout)
  f = jax.jit(lambda x, w, b: conv.conv3x3(x, w, b, method=method, relu=True))
  y, vjp = jax.vjp(f, jnp.float32(x), jnp.float32(w), jnp.float32(b))
  dx, dw, db = vjp(jnp.float32(dy))
  pre = _conv64(x, w) + b
  assert (pre < 0).mean() > 0.2  # the ReLU matters
  g = dy * (pre > 0)
  ref_dx, ref_dw = _conv64_vjp(x, w, g)
  assert _rel(y, np.maximum(pre, 0)) < 1e-5
  assert _rel(dx, ref_dx) < 1e-4
  assert _rel(dw, ref_dw) < 1e-4
  assert _rel(db, g.sum(axis=(0, 1, 2))) < 1e-4


def test_fused_bias_relu_errors():
  with pytest.raises(ValueError, match='float32 bias of shape'):
    dnnl.conv3x3_bias_relu(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 3)),
                           jnp.ones((2,)))


@pytest.mark.parametrize('method,cin,cout,mask_batch', [
    ('dnnl', 5, 6, 2), ('lax', 5, 6, 2), ('native_winograd', 16, 16, 2),
    ('native_winograd', 16, 32, 1)])
def test_fused_mask_matches_reference(method, cin, cout, mask_batch):
  _check_fused_mask(method, cin, cout, mask_batch)


def test_native_winograd_fused_mask_each_isa(winograd_isa):
  # Bias, ReLU and the mask in the output transform, per instruction set.
  assert dnnl.winograd_isa() == winograd_isa
  _check_fused_mask('native_winograd', 32, 16, 2)


def _check_fused_mask(method, cin, cout, mask_batch):
  x, w, dy = _data((2, 9, 11, cin), cout, seed=4)
  b = np.linspace(-0.5, 0.5, cout)
  mask = np.ones((mask_batch, 9, 11, 1))
  mask[0, 6:] = 0
  mask[-1, :, 8:] = 0
  f = jax.jit(lambda x, w, b, m: conv.conv3x3(x, w, b, method=method,
                                               relu=True, mask=m))
  y, vjp = jax.vjp(f, *map(jnp.float32, (x, w, b, mask)))
  dx, dw, db, dmask = vjp(jnp.float32(dy))
  pre = _conv64(x, w) + b
  g = dy * (pre > 0) * mask
  ref_dx, ref_dw = _conv64_vjp(x, w, g)
  assert _rel(y, np.maximum(pre, 0) * mask) < 1e-5
  assert np.all((np.asarray(y) * (1 - mask)) == 0)
  assert _rel(dx, ref_dx) < 1e-4 and _rel(dw, ref_dw) < 1e-4
  assert _rel(db, g.sum(axis=(0, 1, 2))) < 1e-4
  assert not np.any(np.asarray(dmask))  # the mask is a constant



def test_masked_winograd_errors():
  x = jnp.ones((2, 4, 4, 16))
  w = jnp.ones((3, 3, 16, 16))
  b = jnp.ones((16,))
  for bad in (jnp.ones((2, 4, 4, 16)), jnp.ones((3, 4, 4, 1)),
              jnp.ones((1, 4, 5, 1)), jnp.ones((1, 4, 4, 1), jnp.int32)):
    with pytest.raises(ValueError, match='mask of shape'):
      winograd.conv3x3_bias_relu_mask(x, w, b, bad)
    # conv3x3 multiplies such masks in after the kernel instead (or lets
    # numpy broadcasting fail).
    assert not conv.conv_ops.mask_fits(x, bad)
