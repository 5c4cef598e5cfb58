"""Native CPU kernels: VDSR's 3x3 convolutions through oneDNN (XLA FFI).

Build once after installing (needs g++ and the `onednn-devel-cpu-gomp` wheel
from requirements.txt): `python -m vdsr_jax.native.build`. Until then
`vdsr_jax.conv` uses XLA's own convolution (same results, ~2-3x slower
training on CPU) and says so once in the log.
"""
