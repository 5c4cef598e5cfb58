r"""VDSR in JAX (this project) against PyTorch, side by side, CPU or GPU.

  python benchmarks/compare_torch.py [--repeats=N] [--json_out=FILE]
      [--configs=train_step,infer_512,infer_1080p] [--jax_conv=auto|lax|...]
      [--device=cpu|gpu] [--precision=default|highest|bf16] [--jax_bucket=32]
      [--jax_mask=auto|always] [--jax_winograd_isa=auto|avx512|avx2]

Three configurations, and a fourth on request:
  train_step:  one optimiser update on a batch of 64 41x41 patches. JAX runs
               the project's own jitted step (`train.make_train_step`: MSE,
               adjustable global-norm clipping, SGD momentum 0.9, weight
               decay 1e-4, donated state); PyTorch the same recipe
               (benchmarks/torch_vdsr.py).
  infer_512:   the network on one 512x512 luminance image
               (JAX: `inference.network_forward` as the project runs it;
               512 fills its 32-pixel bucket, so no padding or mask;
               PyTorch: `inference_mode`).
  infer_1080p: the same on 1920x1080 (JAX pads to the 32-pixel bucket,
               1920x1088, i.e. 0.7% more pixels, and still reports 1080p).
  matmul:      one square matrix product (8192 on GPU, 2048 on CPU) in the
               precision under test: the matrix units' measured ceiling.
               With it, every configuration also reports the fraction of
               that ceiling its TFLOP/s reach (VDSR FLOPs counted
               analytically: 2 x 9 x Cin x Cout per pixel and layer, x3 for
               a training step).

Device. `--device=cpu` (default) pins JAX to its CPU backend and PyTorch to
2 threads; `--device=gpu` runs both on the first GPU (JAX's default backend
must be CUDA; PyTorch on 'cuda', every timed run ends with a synchronize).
`--precision=default` leaves each framework's default for float32
convolutions on GPU (both allow TF32 on Ampere and later: JAX's default
precision, PyTorch's `cudnn.allow_tf32 = True`); `highest` asks both for
full float32 (`jax_default_matmul_precision='highest'`,
`cudnn.allow_tf32 = False`); `bf16` is mixed precision in both: JAX
computes the network in bfloat16 with float32 parameters (train.py's
`--compute_dtype=bfloat16`, `network_forward(dtype=...)`), PyTorch runs
it under `torch.autocast(dtype=torch.bfloat16)`. Peak memory on GPU is the
device's peak allocation of each worker (JAX `memory_stats`, PyTorch
`max_memory_allocated`), besides the host RSS.

Method. Each (framework, configuration) runs in its own worker process, so
the reported peak memory is that worker's peak resident set size
(ru_maxrss: framework runtime + model + buffers of that configuration;
`rss_after_import_mb` is the runtime alone). Both workers of a configuration
compile/warm up first (2 untimed runs), then the parent asks them in turn,
A, B, A, B, ..., for one timed run each: interleaving spreads the load of
other processes on the machine over both. Times are medians; the 1-minute
load average is recorded before and after. Throughput: patches/s for
training, megapixels/s for inference; speedup = torch_ms / jax_ms (> 1: JAX
faster).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CONFIGS = ('train_step', 'infer_512', 'infer_1080p', 'matmul')
DEFAULT_CONFIGS = CONFIGS[:3]
SHAPES = {'infer_512': (512, 512), 'infer_1080p': (1080, 1920)}
BATCH, PATCH = 64, 41
DEPTH, FEATURES = 20, 64


def _matmul_size() -> int:
  return 8192 if _device() == 'gpu' else 2048


def flops(config: str) -> float:
  """Floating-point operations of one run of `config` (multiply-add = 2)."""
  if config == 'matmul':
    return 2.0 * _matmul_size() ** 3
  per_pixel = 2 * 9 * (FEATURES + (DEPTH - 2) * FEATURES ** 2 + FEATURES)
  if config == 'train_step':  # forward, input gradient, weight gradient
    return 3.0 * per_pixel * BATCH * PATCH * PATCH
  h, w = SHAPES[config]
  return float(per_pixel * h * w)


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------
# Workers: set up one configuration, then time one run per 'RUN' line.
# ----------------------------------------------------------------------------


def _device() -> str:
  return os.environ.get('VDSR_BENCH_DEVICE', 'cpu')


def _precision() -> str:
  return os.environ.get('VDSR_BENCH_PRECISION', 'default')


def _bucket() -> int:
  return int(os.environ.get('VDSR_BENCH_BUCKET', '32'))


def _mask() -> str:
  return os.environ.get('VDSR_BENCH_MASK', 'auto')


def _winograd_isa() -> str:
  return os.environ.get('VDSR_BENCH_WINOGRAD_ISA', 'auto')


def _jax_runner(config: str, conv_method: str):
  import jax
  import jax.numpy as jnp
  import numpy as np
  if _device() == 'cpu':
    jax.config.update('jax_platforms', 'cpu')
  elif jax.default_backend() != 'gpu':
    raise RuntimeError(f'--device=gpu but JAX runs on {jax.default_backend()}')
  if _precision() == 'highest':
    jax.config.update('jax_default_matmul_precision', 'highest')
  dtype = jnp.bfloat16 if _precision() == 'bf16' else jnp.float32
  from vdsr_jax import conv
  from vdsr_jax import inference
  from vdsr_jax import models
  from vdsr_jax import train
  from vdsr_jax import train_config
  conv.METHOD = conv_method
  if _winograd_isa() != 'auto':
    from vdsr_jax.native import dnnl
    dnnl.use_winograd_isa(_winograd_isa())
  rng = np.random.default_rng(0)
  if config == 'matmul':
    n = _matmul_size()
    a, b = (jax.device_put(rng.random((n, n), np.float32).astype(dtype))
            for _ in range(2))
    product = jax.jit(jnp.matmul)
    return lambda: product(a, b).block_until_ready()
  if config == 'train_step':
    cfg = train_config.TrainConfig(batch_size=BATCH, patch_size=PATCH,
                                   eval_scales=(), progress=False,
                                   compute_dtype=jnp.dtype(dtype).name)
    mesh = train.make_mesh()
    model = train.create_model(cfg)
    tx, schedule = train.create_optimizer(cfg)
    state = train.create_train_state(cfg, model, tx, mesh)
    step = train.make_train_step(cfg, model, tx, schedule, mesh)
    batch = train.global_batch(
        {'inputs': rng.random((BATCH, PATCH, PATCH, 1), np.float32),
         'targets': rng.random((BATCH, PATCH, PATCH, 1), np.float32)}, mesh)
    holder = [state]

    def run():
      holder[0], metrics = step(holder[0], batch)
      jax.block_until_ready((holder[0], metrics))
    return run
  h, w = SHAPES[config]
  params = models.init_params(jax.random.PRNGKey(0), models.VDSR(), 9)
  x = jax.device_put(rng.random((1, h, w, 1), np.float32))

  bucket = _bucket() or None
  if bucket and _mask() == 'always':
    # The masked program even where the image fills its bucket (the
    # per-layer mask network_forward applied to every bucketed image before
    # it skipped it for bucket-sized ones), padded once outside the timed
    # call: the cost of the mask alone.
    ph, pw = (inference.bucket_size(n, bucket) for n in (h, w))
    padded = jnp.pad(x, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
    forward = inference._compiled_forward(  # pylint: disable=protected-access
        20, 64, True, jnp.dtype(dtype).name)
    valid = np.array([h, w], np.int32)
    return lambda: forward(params, padded, valid)[:, :h, :w].block_until_ready()

  def run():
    inference.network_forward(params, x, dtype=dtype,
                              bucket=bucket).block_until_ready()
  return run


def _torch_runner(config: str):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_vdsr
  import torch
  device = 'cuda' if _device() == 'gpu' else 'cpu'
  torch_vdsr.setup(threads=int(os.environ.get('TORCH_THREADS', 2)))
  if device == 'cuda':
    tf32 = _precision() != 'highest'
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
  half = torch.bfloat16 if _precision() == 'bf16' else None
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  if config == 'matmul':
    n = _matmul_size()
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand((n, n), generator=gen).to(device, half or torch.float32)
            for _ in range(2))

    def product():
      torch.mm(a, b)
      sync()
    return product
  channels_last = os.environ.get('TORCH_CHANNELS_LAST', '1') == '1'
  model = torch_vdsr.make_model(channels_last).to(device)
  if config == 'train_step':
    step = torch_vdsr.make_train_step(model, autocast_dtype=half)
    x = torch_vdsr.batch((BATCH, 1, PATCH, PATCH), channels_last, 0).to(device)
    y = torch_vdsr.batch((BATCH, 1, PATCH, PATCH), channels_last, 1).to(device)
    return lambda: float(step(x, y))
  h, w = SHAPES[config]
  forward = torch_vdsr.make_forward(model, autocast_dtype=half)
  x = torch_vdsr.batch((1, 1, h, w), channels_last, 0).to(device)

  def run():
    forward(x)
    sync()
  return run


def _device_peak_mb(framework: str) -> float:
  """Peak accelerator memory allocated by this worker (0 on CPU)."""
  if _device() != 'gpu':
    return 0.0
  if framework == 'jax':
    import jax
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get('peak_bytes_in_use', 0) / 2**20
  import torch
  return torch.cuda.max_memory_allocated() / 2**20


def worker(framework: str, config: str, conv_method: str) -> None:
  if framework == 'jax':
    import jax  # pylint: disable=unused-import
  else:
    import torch  # pylint: disable=unused-import
  rss_import = _rss_mb()
  t0 = time.perf_counter()
  run = (_jax_runner(config, conv_method) if framework == 'jax'
         else _torch_runner(config))
  for _ in range(2):
    run()
  print(json.dumps({'ready': True, 'setup_s': time.perf_counter() - t0}),
        flush=True)
  for line in sys.stdin:
    if line.strip() != 'RUN':
      break
    t = time.perf_counter()
    run()
    print(json.dumps({'ms': (time.perf_counter() - t) * 1e3}), flush=True)
  print(json.dumps({'peak_rss_mb': _rss_mb(),
                    'rss_after_import_mb': rss_import,
                    'device_peak_mb': _device_peak_mb(framework)}),
        flush=True)


# ----------------------------------------------------------------------------
# Parent: interleave the two workers of each configuration.
# ----------------------------------------------------------------------------


class _Worker:

  def __init__(self, framework, config, conv_method, extra_env=None):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env.update(extra_env or {})
    env['PYTHONPATH'] = repo + os.pathsep + env.get('PYTHONPATH', '')
    self.proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), f'--worker={framework}',
         f'--configs={config}', f'--jax_conv={conv_method}'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'worker died (rc={self.proc.wait()})')
    return json.loads(line)

  def ready(self):
    return self._read()

  def run(self) -> float:
    self.proc.stdin.write('RUN\n')
    self.proc.stdin.flush()
    return self._read()['ms']

  def close(self):
    self.proc.stdin.write('QUIT\n')
    self.proc.stdin.flush()
    out = self._read()
    self.proc.wait()
    return out


def _median(xs):
  xs = sorted(xs)
  n = len(xs)
  return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def compare(config: str, repeats: int, conv_method: str) -> dict:
  load_before = os.getloadavg()[0]
  # Set up one after the other (compilation must not overlap timing).
  jw = _Worker('jax', config, conv_method)
  jax_setup = jw.ready()['setup_s']
  tw = _Worker('torch', config, conv_method)
  torch_setup = tw.ready()['setup_s']
  jax_ms, torch_ms = [], []
  for i in range(repeats):
    order = (jw, tw) if i % 2 == 0 else (tw, jw)
    for w in order:
      (jax_ms if w is jw else torch_ms).append(w.run())
  jmem, tmem = jw.close(), tw.close()
  j, t = _median(jax_ms), _median(torch_ms)
  if config == 'train_step':
    unit, work = 'patches/s', BATCH
  elif config == 'matmul':
    unit, work = 'TFLOP/s', flops(config) / 1e12
  else:
    unit, work = 'MP/s', SHAPES[config][0] * SHAPES[config][1] / 1e6
  return {
      'jax_ms': j, 'torch_ms': t, 'speedup': t / j,
      'flops': flops(config),
      'jax_tflops': flops(config) / (j / 1e3) / 1e12,
      'torch_tflops': flops(config) / (t / 1e3) / 1e12,
      'jax_throughput': work / (j / 1e3), 'torch_throughput': work / (t / 1e3),
      'throughput_unit': unit,
      'jax_ms_all': jax_ms, 'torch_ms_all': torch_ms,
      'jax_peak_rss_mb': jmem['peak_rss_mb'],
      'torch_peak_rss_mb': tmem['peak_rss_mb'],
      'jax_rss_after_import_mb': jmem['rss_after_import_mb'],
      'torch_rss_after_import_mb': tmem['rss_after_import_mb'],
      'jax_device_peak_mb': jmem['device_peak_mb'],
      'torch_device_peak_mb': tmem['device_peak_mb'],
      'jax_setup_s': jax_setup, 'torch_setup_s': torch_setup,
      'jax_conv': conv_method,
      'loadavg_1m_before': load_before, 'loadavg_1m_after': os.getloadavg()[0],
  }


def _gpu_name() -> str:
  try:
    return subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'],
                          capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--json_out', default=None)
  p.add_argument('--configs', default=','.join(DEFAULT_CONFIGS),
                 help=f'Comma-separated, from {CONFIGS}.')
  p.add_argument('--jax_conv', default='auto',
                 help="vdsr_jax.conv.METHOD for the JAX side ('auto': the "
                      "library default).")
  p.add_argument('--device', default='cpu', choices=('cpu', 'gpu'))
  p.add_argument('--precision', default='default',
                 choices=('default', 'highest', 'bf16'),
                 help='default: float32, TF32 allowed on GPU in both '
                      'frameworks; highest: full float32; bf16: bfloat16 '
                      'mixed precision in both.')
  p.add_argument('--jax_bucket', type=int, default=32,
                 help='Inference shape bucket of the JAX side (0: none, so '
                      'no padding and no per-layer mask; one compilation '
                      'per image size).')
  p.add_argument('--jax_mask', default='auto', choices=('auto', 'always'),
                 help="auto: as network_forward (no mask for an image that "
                      "fills its bucket); always: the padded, masked program "
                      "for every image (to time the mask's cost).")
  p.add_argument('--jax_winograd_isa', default='auto',
                 choices=('auto', 'avx512', 'avx2'),
                 help="The CPU Winograd kernels' instruction set ('auto': the "
                      "widest the CPU has), to compare them on one machine.")
  p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:  # device and precision come from the parent's environment
    worker(args.worker, args.configs, args.jax_conv)
    return
  os.environ['VDSR_BENCH_DEVICE'] = args.device
  os.environ['VDSR_BENCH_PRECISION'] = args.precision
  os.environ['VDSR_BENCH_BUCKET'] = str(args.jax_bucket)
  os.environ['VDSR_BENCH_MASK'] = args.jax_mask
  os.environ['VDSR_BENCH_WINOGRAD_ISA'] = args.jax_winograd_isa
  configs = [c for c in args.configs.split(',') if c]
  for c in configs:
    if c not in CONFIGS:
      p.error(f'unknown config {c!r}; choose from {CONFIGS}')
  from vdsr_jax import reporting  # the parent only; workers import their own
  results = {'machine': {'cpus': os.cpu_count(),
                         'python': sys.version.split()[0],
                         'gpu': _gpu_name() if args.device == 'gpu' else None,
                         **reporting.cpu_info()},
             'device': args.device, 'precision': args.precision,
             'jax_bucket': args.jax_bucket, 'jax_mask': args.jax_mask,
             'jax_winograd_isa': args.jax_winograd_isa,
             'repeats': args.repeats}
  print(f'{"config":12s} {"jax ms":>9s} {"torch ms":>9s} {"speedup":>8s} '
        f'{"jax thr":>10s} {"torch thr":>10s} {"jax MB":>7s} {"torch MB":>8s} '
        f'{"load":>9s}')
  mem = 'device_peak_mb' if args.device == 'gpu' else 'peak_rss_mb'
  for c in configs:
    r = compare(c, args.repeats, args.jax_conv)
    results[c] = r
    print(f'{c:12s} {r["jax_ms"]:9.1f} {r["torch_ms"]:9.1f} '
          f'{r["speedup"]:7.2f}x {r["jax_throughput"]:10.2f} '
          f'{r["torch_throughput"]:10.2f} {r["jax_" + mem]:7.0f} '
          f'{r["torch_" + mem]:8.0f} '
          f'{r["loadavg_1m_before"]:4.1f}/{r["loadavg_1m_after"]:<4.1f}'
          f'  ({r["throughput_unit"]})', flush=True)
  if 'matmul' in results:
    print(f'\n{"config":12s} {"jax TFLOP/s":>12s} {"torch TFLOP/s":>14s} '
          f'(fraction of the measured matmul ceiling)')
    for c in configs:
      for fw in ('jax', 'torch'):
        results[c][f'{fw}_of_ceiling'] = (
            results[c][f'{fw}_tflops'] / results['matmul'][f'{fw}_tflops'])
      r = results[c]
      print(f'{c:12s} {r["jax_tflops"]:7.2f} ({r["jax_of_ceiling"]:4.0%}) '
            f'{r["torch_tflops"]:8.2f} ({r["torch_of_ceiling"]:4.0%})')
  if args.json_out:
    with open(args.json_out, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
