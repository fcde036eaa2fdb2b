"""optax's own tests of the drop-in functions, run with jxent patched in.

jxent's softmax cross-entropies and sigmoid binary cross-entropy claim to be
drop-in replacements for optax's. optax ships its tests with the package:
this module imports the test classes for those functions from the installed
optax and runs them with jxent's functions in place of optax's (issue 11),
checking values, masks, axes and derivatives in forward and reverse mode.
"""

import pytest

import jxent

optax_tests = pytest.importorskip("optax.losses._classification_test")
_classification = optax_tests._classification

_PATCHES = {
    "softmax_cross_entropy": jxent.softmax_cross_entropy,
    # jxent's soft-label loss is "safe": -inf logits without mass give 0.
    "safe_softmax_cross_entropy": jxent.softmax_cross_entropy,
    "softmax_cross_entropy_with_integer_labels":
        jxent.softmax_cross_entropy_with_integer_labels,
    "sigmoid_binary_cross_entropy": jxent.sigmoid_binary_cross_entropy,
}


@pytest.fixture(autouse=True)
def jxent_in_place_of_optax(monkeypatch):
  for name, fn in _PATCHES.items():
    monkeypatch.setattr(_classification, name, fn)


def test_the_patch_reaches_optax_tests():
  # The test classes look the functions up on this module at call time.
  assert optax_tests._classification is _classification
  assert all(hasattr(_classification, name) for name in _PATCHES)


class TestSoftmaxCrossEntropy(optax_tests.SoftmaxCrossEntropyTest):
  pass


class TestSafeSoftmaxCrossEntropy(optax_tests.SafeSoftmaxCrossEntropyTest):
  pass


class TestSoftmaxCrossEntropyWithIntegerLabels(
    optax_tests.SoftmaxCrossEntropyWithIntegerLabelsTest):
  pass


class TestSigmoidCrossEntropy(optax_tests.SigmoidCrossEntropyTest):
  pass
