"""Pallas (Triton) kernels for the softmax cross-entropies on GPUs.

Each kernel computes exactly what the XLA path computes: `row_stats` the
forward pass's per-row numbers (`jxent._rows.dense_row_stats`),
`logits_gradient` the backward pass's element-wise gradient
(`jxent._rows.logits_gradient`). `softmax_cross_entropy_rows` puts them in
one custom VJP. `jxent._implementation` decides when they run.
"""

from jxent._kernels.config import KernelConfig as KernelConfig
from jxent._kernels.config import default_config as default_config
from jxent._kernels.cross_entropy import (
    softmax_cross_entropy_rows as softmax_cross_entropy_rows,
)
from jxent._kernels.gradient import logits_gradient as logits_gradient
from jxent._kernels.row_stats import row_stats as row_stats
