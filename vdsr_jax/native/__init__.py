"""Native CPU kernels for VDSR's 3x3 convolutions, as XLA FFI custom calls.

`dnnl`: oneDNN's direct convolutions (dnnl_conv.cc), any float32 layer.
`winograd`: Winograd F(4x4, 3x3) on AVX-512 or AVX2 + FMA (winograd_conv.cc),
layers whose channel counts are multiples of 16 (VDSR's 64 -> 64), ~2.3x
faster still.
Both live in one library, built once after installing (needs g++ and the
`onednn-devel-cpu-gomp` wheel from requirements.txt):
`python -m vdsr_jax.native.build`. Until then `vdsr_jax.conv` uses XLA's own
convolution (same results, ~2-3x slower training on CPU) and says so once in
the log.
"""
