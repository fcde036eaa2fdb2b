"""Vocabulary-parallel losses for use inside `jax.shard_map`.

Each function takes this device's slice of the vocabulary (of the logits,
or of W's columns) and the name of the mesh axis it is split over. Each
device reduces its own slice to a max and a sum of exponentials per row,
and these are combined with `pmax` and `psum` in the same stable
log-sum-exp as the unsharded functions, so the vocabulary is never
gathered; the results equal the unsharded functions', in value and
gradient.
"""

from jxent._sharded import entropy_from_logits as entropy_from_logits
from jxent._sharded import (
    kl_divergence_from_logits as kl_divergence_from_logits,
)
from jxent._sharded import linear_js_divergence as linear_js_divergence
from jxent._sharded import linear_kl_divergence as linear_kl_divergence
from jxent._sharded import (
    linear_kl_divergence_from_top_k as linear_kl_divergence_from_top_k,
)
from jxent._sharded import linear_log_probs as linear_log_probs
from jxent._sharded import (
    linear_policy_gradient_loss as linear_policy_gradient_loss,
)
from jxent._sharded import (
    linear_softmax_cross_entropy as linear_softmax_cross_entropy,
)
from jxent._sharded import pad_vocab as pad_vocab
from jxent._sharded import softmax_cross_entropy as softmax_cross_entropy
from jxent._sharded import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)

__all__ = (
    "entropy_from_logits",
    "kl_divergence_from_logits",
    "linear_js_divergence",
    "linear_kl_divergence",
    "linear_kl_divergence_from_top_k",
    "linear_log_probs",
    "linear_policy_gradient_loss",
    "linear_softmax_cross_entropy",
    "pad_vocab",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
)
