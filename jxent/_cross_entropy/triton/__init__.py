"""Pallas Triton kernels for the softmax cross-entropies on NVIDIA GPUs.

Each kernel computes exactly what the XLA reference computes, and imports
it (never the reverse): `row_stats` the forward pass's per-row numbers
(`jxent._cross_entropy.rows.dense_row_stats`), `logits_gradient` the
backward pass's element-wise gradient (`rows.logits_gradient`).
`cross_entropy_rows` puts both in one custom VJP; `stats_kernel` serves
both to the default path. `information` holds the forward kernels of the
entropy, KL and cross-entropy of logits, `information_gradient` their
backward kernels (`information_kernel` serves both). Forward mode and
second derivatives stay XLA's. `jxent._cross_entropy.api` registers them
as "triton".
"""

from jxent._cross_entropy.triton.config import KernelConfig as KernelConfig
from jxent._cross_entropy.triton.config import default_config as default_config
from jxent._cross_entropy.triton.cross_entropy import (
    cross_entropy_rows as cross_entropy_rows,
)
from jxent._cross_entropy.triton.cross_entropy import (
    information_kernel as information_kernel,
)
from jxent._cross_entropy.triton.cross_entropy import (
    softmax_cross_entropy_rows as softmax_cross_entropy_rows,
)
from jxent._cross_entropy.triton.cross_entropy import (
    stats_kernel as stats_kernel,
)
from jxent._cross_entropy.triton.gradient import (
    logits_gradient as logits_gradient,
)
from jxent._cross_entropy.triton.row_stats import row_stats as row_stats
