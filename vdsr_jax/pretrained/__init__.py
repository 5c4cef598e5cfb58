"""The shipped weights (`vdsr_291.npz`) and the record of their run (`.json`).

A package only so that setuptools packages the folder; the files are read by
`vdsr_jax.weights.load_pretrained`.
"""
