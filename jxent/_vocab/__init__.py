"""Vocabulary-scale heads: losses of `x @ w` that never hold the logits.

`blocks` is the walk over vocabulary blocks; `walks` the online statistics
the heads share; `rule` the one custom-VJP rule every head uses; `chunks`
the reducing heads' fast mode (token chunks, the gradients made in the
forward pass); then one module per head.
"""
