"""The shipped weights (`vdsr_291.npz`) and the record of their run (`.json`).

The files are package data of `vdsr_jax` (setup.cfg) and are read by
`vdsr_jax.weights.load_pretrained`. This module only makes the folder a
package, so that building the wheel does not warn that it would be ignored.
"""
