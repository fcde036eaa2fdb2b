"""Command line: ``python -m jxent.demo`` or ``jxent-demo``."""

import argparse
import sys
from collections.abc import Sequence

from jxent.demo import data as data_lib
from jxent.demo import model as model_lib
from jxent.demo import train

PROG = "jxent-demo"


def _parser() -> argparse.ArgumentParser:
  d = train.Config()
  p = argparse.ArgumentParser(
      prog=PROG,
      description=(
          "Train a Flax NNX classifier with Optax on a jxent loss, then report"
          " accuracy, cross-entropy in nats and bits, H(P,Q) = H(P) +"
          " KL(P||Q) and calibration. Defaults: scikit-learn's digits."
      ),
  )
  p.add_argument("--epochs", type=int, default=d.epochs,
                 help="passes over the training set (default: %(default)s)")
  p.add_argument("--batch-size", type=int, default=d.batch_size,
                 help="examples per step (default: %(default)s)")
  p.add_argument("--lr", type=float, default=d.lr,
                 help="peak learning rate of AdamW's warmup+cosine schedule"
                 " (default: %(default)s)")
  p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                 help="AdamW weight decay (default: %(default)s)")
  p.add_argument("--seed", type=int, default=d.seed,
                 help="seed of the weights and batch order (default:"
                 " %(default)s)")
  p.add_argument("--model", choices=model_lib.MODELS, default=d.model,
                 help="classifier (default: %(default)s)")
  p.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                 help="label smoothing of the targets, in [0, 1) (default:"
                 " %(default)s)")
  p.add_argument("--data", metavar="PATH.npz", default=None,
                 help="train on your own arrays: x (inputs) and y (integer"
                 " labels) in a .npz file (default: the digits)")
  p.add_argument("--out", metavar="DIR", default=None,
                 help="output folder (default: a new folder under runs/)")
  p.add_argument("--no-plots", dest="plots", action="store_false",
                 help="skip the PNG figures")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Parses the flags and runs :func:`jxent.demo.train.train_and_evaluate`.

  Args:
    argv: The arguments after the program name; None reads `sys.argv`.

  Returns:
    The exit status: 0 on success, 2 when the data or a setting is bad
    (after one line on stderr saying why).
  """
  args = _parser().parse_args(argv)
  config = train.Config(
      epochs=args.epochs,
      batch_size=args.batch_size,
      lr=args.lr,
      weight_decay=args.weight_decay,
      seed=args.seed,
      model=args.model,
      label_smoothing=args.label_smoothing,
      data=args.data,
      out=args.out,
      plots=args.plots,
  )
  try:
    train.train_and_evaluate(config)
  except (data_lib.DataError, train.ConfigError) as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
