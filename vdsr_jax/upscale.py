"""`python -m vdsr_jax.upscale`: the `vdsr-upscale` command line.

Usage and flags: `vdsr_jax.upscaling.USAGE` and `define_flags` (or
`--help`). This module only starts the program: the logic is in
`vdsr_jax.upscaling`, whose `run_main` is also the console script. Library
code should not import this module: `vdsr_jax.upscale` is the `upscale`
function, and importing the module would rebind that name.
"""

from vdsr_jax import upscaling

if __name__ == '__main__':
  upscaling.run_main()
