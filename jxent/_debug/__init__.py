"""`jxent.checked`, and its adapter for Flax NNX objects."""
