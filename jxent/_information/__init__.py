"""Information, entropy, cross-entropy, KL and JS divergences.

`probabilities` takes distributions; `logits` takes logits, with custom
JVPs built on the cross-entropies' row mechanics.
"""
