"""The table printed at the end of a run."""

from typing import Any


def format_summary(m: dict[str, Any]) -> str:
  """Formats a run's metrics as a plain-text table.

  Args:
    m: The metrics returned by :func:`jxent.demo.train.train_and_evaluate`.

  Returns:
    Several lines of text, without a trailing newline.
  """

  def row(label: str, symbol: str, name: str) -> str:
    nats, bits = m[f"test_{name}_nats"], m[f"test_{name}_bits"]
    return f"  {label:<22}{symbol:<10}{nats:>10.4f}{bits:>10.4f}"

  return "\n".join([
      f"jxent demo: {m['model']} on {m['data']}, {m['num_train']} train /"
      f" {m['num_test']} test examples, {m['epochs']}"
      f" epoch{'' if m['epochs'] == 1 else 's'},"
      f" {m['seconds']:.1f} s",
      "",
      f"  {'train accuracy':<32}{m['train_accuracy']:>10.2%}",
      f"  {'test accuracy':<32}{m['test_accuracy']:>10.2%}",
      f"  {'calibration error (ECE)':<32}{m['test_ece']:>10.2%}",
      "",
      f"  {'test set, mean per example':<32}{'nats':>10}{'bits':>10}",
      row("cross-entropy", "-log Q(y)", "cross_entropy"),
      row("predictive entropy", "H(Q)", "predictive_entropy"),
      row("target cross-entropy", "H(P,Q)", "target_cross_entropy"),
      row("  = target entropy", "H(P)", "target_entropy"),
      row("  + divergence", "KL(P||Q)", "kl_divergence"),
      f"  P: targets with label smoothing {m['label_smoothing']:g};"
      " Q: the model's softmax.",
      f"  Written to {m['out']}",
  ])
