"""jxent: stable, jit-compiled information-theory losses for JAX."""

from jxent import sharded as sharded
from jxent._cross_entropy.losses import (
    sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy,
)
from jxent._cross_entropy.losses import (
    softmax_cross_entropy as softmax_cross_entropy,
)
from jxent._cross_entropy.losses import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from jxent._debug.checked import checked as checked
from jxent._information.logits import (
    cross_entropy_from_logits as cross_entropy_from_logits,
)
from jxent._information.logits import (
    entropy_from_logits as entropy_from_logits,
)
from jxent._information.logits import (
    kl_divergence_from_logits as kl_divergence_from_logits,
)
from jxent._information.probabilities import cross_entropy as cross_entropy
from jxent._information.probabilities import entropy as entropy
from jxent._information.probabilities import information as information
from jxent._information.probabilities import js_divergence as js_divergence
from jxent._information.probabilities import kl_divergence as kl_divergence
from jxent._numerics.logsumexp import log_softmax as log_softmax
from jxent._numerics.logsumexp import logsumexp as logsumexp
from jxent._numerics.logsumexp import softmax as softmax
from jxent._vocab.cross_entropy import (
    linear_softmax_cross_entropy as linear_softmax_cross_entropy,
)
from jxent._vocab.divergences import (
    linear_js_divergence as linear_js_divergence,
)
from jxent._vocab.divergences import (
    linear_kl_divergence as linear_kl_divergence,
)
from jxent._vocab.log_probs import linear_log_probs as linear_log_probs
from jxent._vocab.log_probs import (
    linear_policy_gradient_loss as linear_policy_gradient_loss,
)
from jxent._vocab.top_k import (
    linear_kl_divergence_from_top_k as linear_kl_divergence_from_top_k,
)

__version__ = "0.1.0"

__all__ = (
    "checked",
    "cross_entropy",
    "cross_entropy_from_logits",
    "entropy",
    "entropy_from_logits",
    "information",
    "js_divergence",
    "kl_divergence",
    "kl_divergence_from_logits",
    "linear_js_divergence",
    "linear_kl_divergence",
    "linear_kl_divergence_from_top_k",
    "linear_log_probs",
    "linear_policy_gradient_loss",
    "linear_softmax_cross_entropy",
    "log_softmax",
    "logsumexp",
    "sharded",
    "sigmoid_binary_cross_entropy",
    "softmax",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
)
