r"""Command line: upscale image files with VDSR.

  python -m vdsr_jax.upscale INPUT... --scale=S [--weights=PATH]
      [--output=PATH_OR_DIR] [--compare] [--reference=PATH] [--tile=N]

INPUT: image files or folders of them. Each result is written atomically as
<stem>_x<S>.png next to its input, or into --output; an input file is never
overwritten. Unreadable files are reported and skipped; the exit status is 1
if any input failed.

This module only starts the program: the logic and the flags are in
`vdsr_jax.upscaling` (whose `run_main` is the `vdsr-upscale` console script).
Library code should not import this module: `vdsr_jax.upscale` is the
`upscale` function, and importing the module would rebind that name.
"""

from absl import app

from vdsr_jax import upscaling

if __name__ == '__main__':
  upscaling.define_flags()
  app.run(upscaling.main)
