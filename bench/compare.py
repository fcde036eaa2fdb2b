"""jxent at another commit beside jxent now, in one bench run.

  python -m bench.compare REV [bench options]

exports the `jxent/` package at git revision REV into a temporary folder as
the package `jxent_<rev>`, adds it as a peer (`jxent_<rev>`) to the suites
on materialised logits (ce_int, ce_soft, entropy, kl) and runs the bench CLI
with the remaining options. `time / jxent` of that peer is then the old time
over the new one, measured side by side: above 1, the working tree is
faster. Run it from the repository root.
"""

import dataclasses
import pathlib
import re
import subprocess
import sys
import tempfile


def export_package(rev: str, into: pathlib.Path) -> str:
  """Writes jxent at `rev` to `into/jxent_<rev>/`; returns the module name."""
  name = "jxent_" + re.sub(r"\W", "_", rev)
  files = subprocess.run(
      ["git", "ls-tree", "-r", "--name-only", rev, "jxent"],
      check=True, capture_output=True, text=True).stdout.split()
  for path in files:
    if not path.endswith(".py"):
      continue
    text = subprocess.run(["git", "show", f"{rev}:{path}"], check=True,
                          capture_output=True, text=True).stdout
    # The package imports itself by name: rename those imports.
    text = re.sub(r"\bfrom jxent\b", f"from {name}", text)
    text = re.sub(r"^import jxent$", f"import {name} as jxent", text,
                  flags=re.M)
    target = into / name / pathlib.Path(path).relative_to("jxent")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
  return name


def main(argv: list[str]) -> int:
  if not argv or argv[0].startswith("-"):
    print("usage: python -m bench.compare REV [bench options]",
          file=sys.stderr)
    return 2
  rev, rest = argv[0], argv[1:]
  folder = pathlib.Path(tempfile.mkdtemp(prefix="jxent-compare-"))
  try:
    name = export_package(rev, folder)
  except subprocess.CalledProcessError as err:
    print(f"bench.compare: cannot export jxent at {rev!r}: "
          f"{err.stderr.strip()}", file=sys.stderr)
    return 2
  sys.path.insert(0, str(folder))
  old = __import__(name)

  from bench import registry
  peers = {
      "ce_int": lambda x, y: old.softmax_cross_entropy_with_integer_labels(
          x, y),
      "ce_soft": lambda x, y: old.softmax_cross_entropy(x, y),
      "entropy": lambda x: old.entropy_from_logits(x),
      "kl": lambda p, x: old.kl_divergence_from_logits(p, x),
  }
  for suite_name, fn in peers.items():
    suite = registry.get(suite_name)
    registry.register(dataclasses.replace(
        suite, peers=suite.peers + (registry.Impl(name, fn, f"jxent at {rev}"),),
        baseline=suite.baseline + (name,)))
  from bench.__main__ import main as bench_main
  return bench_main(rest)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
