"""Softmax and sigmoid cross-entropies of materialised logits.

`rows` is the contract and the XLA reference (row statistics, the row step,
the element-wise gradient); `xla` the XLA implementation with its custom
JVP; `triton` the Pallas Triton kernels; `api` the registry of
implementations and the dispatch; `losses` the public functions.
"""
