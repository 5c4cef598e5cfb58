r"""Builds the native convolution kernels: `python -m vdsr_jax.native.build`.

Compiles dnnl_conv.cc and winograd_conv.cc (OpenMP; its kernels are compiled
twice, as AVX-512 and as AVX2 functions, the rest generic x86-64) against
JAX's XLA FFI headers (`jax.ffi.include_dir()`) and the oneDNN headers and
library of the `onednn-devel-cpu-gomp` wheel (installed under `sys.prefix`),
into one library, `_dnnl_conv.so`, next to this file. The file is written
under a temporary name and renamed, so a failed build leaves no partial
library behind; `_dnnl_conv.so.sha256` records the sources it was built
from, so a stale build is refused at load time.
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from vdsr_jax.native import dnnl  # where the source, library and stamp are


class BuildError(RuntimeError):
  """The native kernels could not be built; the message says why."""


def onednn_prefix() -> pathlib.Path:
  """The prefix holding include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so."""
  for prefix in (pathlib.Path(sys.prefix), pathlib.Path(sys.base_prefix)):
    if ((prefix / 'include/oneapi/dnnl/dnnl.hpp').is_file() and
        (prefix / 'lib/libdnnl.so').exists()):
      return prefix
  raise BuildError(
      f'oneDNN headers/library not found under {sys.prefix}: expected '
      'include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so. Install them with '
      '`pip install onednn-devel-cpu-gomp==2023.2.0` (in requirements.txt).')


def build(output: pathlib.Path = dnnl.LIBRARY, compiler: str = 'g++',
          verbose: bool = False) -> pathlib.Path:
  """Compiles the kernels into `output` (atomically) and returns its path."""
  import jax  # pylint: disable=g-import-not-at-top
  if shutil.which(compiler) is None:
    raise BuildError(f'C++ compiler {compiler!r} not found on PATH; install '
                     'one (e.g. `apt-get install g++`) or pass --compiler.')
  prefix = onednn_prefix()
  output = pathlib.Path(output)
  fd, tmp = tempfile.mkstemp(suffix='.so.tmp', dir=output.parent)
  os.close(fd)
  # Generic x86-64 code: winograd_conv.cc marks its AVX-512 and AVX2 kernels
  # itself (it calls those the CPU has), so the library loads on any x86-64
  # CPU. The .inc it includes is not compiled on its own.
  sources = [src for src in dnnl.SOURCES if src.suffix == '.cc']
  objects = [f'{tmp}.{src.stem}.o' for src in sources]
  cmds = [[compiler, '-O3', '-std=c++17', '-fPIC', '-fopenmp', '-w', '-c',
           str(src), f'-I{jax.ffi.include_dir()}',
           f'-I{prefix / "include"}', '-o', obj]
          for src, obj in zip(sources, objects)]
  cmds.append([compiler, '-shared', '-fopenmp', *objects,
               f'-L{prefix / "lib"}', '-ldnnl',
               f'-Wl,-rpath,{prefix / "lib"}', '-o', tmp])
  try:
    for cmd in cmds:
      if verbose:
        print(' '.join(cmd))
      result = subprocess.run(cmd, capture_output=True, text=True,
                              check=False)
      if result.returncode != 0:
        raise BuildError(f'{compiler} failed (exit {result.returncode}):\n'
                         f'{result.stderr[-4000:]}')
    os.chmod(tmp, 0o755)
    dnnl.stamp_path(output).write_text(dnnl.source_hash() + '\n')
    os.replace(tmp, output)
  finally:
    for path in [tmp, *objects]:
      if os.path.exists(path):
        os.remove(path)
  return output


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output', default=str(dnnl.LIBRARY))
  parser.add_argument('--compiler', default=os.environ.get('CXX', 'g++'))
  parser.add_argument('--verbose', action='store_true')
  args = parser.parse_args(argv)
  try:
    path = build(pathlib.Path(args.output), args.compiler, args.verbose)
  except BuildError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'built {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
