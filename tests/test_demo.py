"""Tests of the Flax demo (jxent.demo): training, artefacts, checkpoint, CLI."""

import json
import math
import pickle
import zipfile

import numpy as np
import pytest

import jxent
from jxent.demo import checkpoint, summary, train
from jxent.demo import data as data_lib
from jxent.demo import metrics as metrics_lib
from jxent.demo.__main__ import main

ARTEFACTS = (
    "metrics.json",
    "loss.png",
    "confusion.png",
    "reliability.png",
    "checkpoint/model.json",
    "checkpoint/state.npz",
)
# Keys whose values may differ between two runs with the same seed.
UNSEEDED = ("seconds", "out", "checkpoint")


def _digits_subset(path, n, *, flat=False):
  """Writes the first `n` digits to `path` as an .npz file; returns it."""
  x, y = data_lib.load_digits()
  x = x[:n].reshape(n, -1) if flat else x[:n]
  np.savez(path, x=x, y=y[:n])
  return str(path)


def _quick(**overrides) -> train.Config:
  return train.Config(
      **{"progress": False, "verbose": False, "plots": False} | overrides
  )


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
  """Five epochs on the full digits, with label smoothing; run once."""
  out = tmp_path_factory.mktemp("short_run")
  config = _quick(epochs=5, label_smoothing=0.1, out=str(out))
  return config, train.train_and_evaluate(config)


def test_smoke_run_loss_decreases_and_writes_every_artefact(tmp_path, capsys):
  path = _digits_subset(tmp_path / "small.npz", 300)
  out = tmp_path / "run"
  status = main([
      "--data", path, "--epochs", "3", "--batch-size", "32",
      "--out", str(out),
  ])
  assert status == 0
  for name in ARTEFACTS:
    assert (out / name).is_file(), name
  metrics = json.loads((out / "metrics.json").read_text())
  history = metrics["history"]
  assert [h["epoch"] for h in history] == [1, 2, 3]
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  for key in ("test_accuracy", "test_cross_entropy_nats", "epochs", "seconds"):
    assert key in metrics, key
  assert metrics["num_train"] + metrics["num_test"] == 300
  printed = capsys.readouterr().out
  assert "H(P,Q)" in printed and "KL(P||Q)" in printed


def test_short_run_reaches_90_percent_test_accuracy(short_run):
  _, metrics = short_run
  assert metrics["test_accuracy"] >= 0.90
  assert metrics["num_test"] == 450
  assert np.sum(metrics["confusion_matrix"]) == 450


def test_checkpoint_round_trip_gives_identical_test_accuracy(short_run):
  config, metrics = short_run
  model, model_config = checkpoint.load(metrics["checkpoint"])
  assert model_config.name == "mlp"
  data = data_lib.load_dataset(seed=config.split_seed)
  logits = train.predict(model, data.x_test)
  assert metrics_lib.accuracy(logits, data.y_test) == metrics["test_accuracy"]
  nats = float(jxent.softmax_cross_entropy_with_integer_labels(
      logits, data.y_test, reduction="mean"))
  assert nats == pytest.approx(metrics["test_cross_entropy_nats"], rel=1e-6)


def test_checkpoint_loads_without_pickle(short_run):
  _, metrics = short_run
  state = f"{metrics['checkpoint']}/state.npz"
  with np.load(state, allow_pickle=False) as f:
    assert all(f[name].dtype != object for name in f.files)


def test_checkpoint_with_garbage_members_raises_value_error(
    short_run, tmp_path
):
  # Issue 14: np.load hands back raw bytes for a member that is not .npy,
  # which used to end in an AttributeError.
  src = short_run[1]["checkpoint"]
  (tmp_path / "model.json").write_text(open(f"{src}/model.json").read())
  with zipfile.ZipFile(tmp_path / "state.npz", "w") as z:
    z.writestr("head/bias.npy", b"garbage")
  with pytest.raises(ValueError, match="'head/bias' holds no NumPy array"):
    checkpoint.load(tmp_path)
  (tmp_path / "model.json").write_text("{}")
  with pytest.raises(ValueError, match="not a model config"):
    checkpoint.load(tmp_path)


def test_checkpoint_with_wrong_shapes_is_refused(short_run, tmp_path):
  _, metrics = short_run
  src = metrics["checkpoint"]
  with np.load(f"{src}/state.npz", allow_pickle=False) as f:
    arrays = {name: f[name] for name in f.files}
  arrays["head/bias"] = np.zeros(3, np.float32)
  np.savez(tmp_path / "state.npz", **arrays)
  (tmp_path / "model.json").write_text(open(f"{src}/model.json").read())
  with pytest.raises(ValueError, match="head/bias"):
    checkpoint.load(tmp_path)


def test_summary_decomposes_cross_entropy_with_label_smoothing(short_run):
  _, m = short_run
  # P puts 0.91 on the label and 0.01 on each of the other nine classes.
  h_p = -(0.91 * math.log(0.91) + 9 * 0.01 * math.log(0.01))
  assert m["test_target_entropy_nats"] == pytest.approx(h_p, rel=1e-5)
  assert m["test_target_cross_entropy_nats"] == pytest.approx(
      m["test_target_entropy_nats"] + m["test_kl_divergence_nats"], abs=1e-5
  )
  assert m["test_cross_entropy_bits"] == pytest.approx(
      m["test_cross_entropy_nats"] / math.log(2)
  )
  # The last epoch's test loss is the same smoothed objective, H(P,Q).
  assert m["history"][-1]["test_loss"] == pytest.approx(
      m["test_target_cross_entropy_nats"], rel=1e-5
  )
  assert 0.0 <= m["test_ece"] <= 1.0


def test_same_seed_gives_same_metrics_and_one_progress_bar(tmp_path, capsys):
  path = _digits_subset(tmp_path / "small.npz", 200)
  runs = [
      train.train_and_evaluate(
          _quick(data=path, epochs=2, batch_size=32, out=str(tmp_path / s),
                 progress=s == "a")
      )
      for s in ("a", "b")
  ]
  a, b = ({k: v for k, v in r.items() if k not in UNSEEDED} for r in runs)
  assert a == b
  # One bar for the whole run, left on screen as one line (issue 14).
  bar = capsys.readouterr().err
  assert bar.count("\n") == 1 and "training" in bar and "epoch=2/2" in bar


def test_summary_says_epoch_in_the_singular(short_run):
  _, m = short_run
  text = summary.format_summary(m | {"epochs": 1})
  assert "1 epoch," in text and "1 epochs" not in text
  assert "5 epochs," in summary.format_summary(m)


def test_cnn_smoke_run(tmp_path):
  path = _digits_subset(tmp_path / "small.npz", 300)
  metrics = train.train_and_evaluate(
      _quick(model="cnn", data=path, epochs=3, batch_size=32,
             out=str(tmp_path / "run"))
  )
  history = metrics["history"]
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  assert metrics["test_accuracy"] > 0.3  # Chance is 0.1.
  model, config = checkpoint.load(metrics["checkpoint"])
  assert config.name == "cnn" and config.input_shape == (8, 8)


def _not_npz(path):
  path.write_text("x,y\n1,2\n")


def _npy(path):
  with open(path, "wb") as f:  # np.save(path) would append ".npy".
    np.save(f, np.zeros((4, 2)))


def _missing_y(path):
  np.savez(path, x=np.zeros((4, 2)))


def _float_labels(path):
  np.savez(path, x=np.zeros((4, 2)), y=np.array([0.0, 1.0, 0.0, 1.0]))


def _length_mismatch(path):
  np.savez(path, x=np.zeros((5, 2)), y=np.array([0, 1, 0, 1]))


def _pickled_objects(path):
  np.savez(path, x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))


def _overflowing_inputs(path):
  np.savez(path, x=np.full((4, 2), 1e300), y=np.array([0, 1, 0, 1]))


def _labels_from_one(path):
  np.savez(path, x=np.zeros((4, 2)), y=np.array([1, 2, 1, 2]))


def _pickle_file(path):
  path.write_bytes(pickle.dumps({"x": [1], "y": [0]}))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (None, "no such file"),
        (_not_npz, "not an .npz file"),
        (_npy, "not an .npz file"),
        (_pickle_file, "not an .npz file"),
        (_missing_y, "expected arrays 'x' (inputs) and 'y' (integer labels),"
         " found 'x'"),
        (_float_labels, "labels 'y' must be integers of shape (n,), got"
         " float64[4]"),
        (_length_mismatch, "'x' has 5 examples but 'y' has 4 labels"),
        (_pickled_objects, "cannot read 'x' (Object arrays cannot be loaded"
         " when allow_pickle=False)"),
        (_overflowing_inputs, "inputs 'x' hold NaN, infinity or values beyond"
         " float32"),
        (_labels_from_one, "found 2 distinct labels from 1 to 2"),
    ],
)
def test_bad_data_file_gives_one_line_error(tmp_path, capsys, make, message):
  path = tmp_path / "bad.npz"
  if make is not None:
    make(path)
  status = main(["--data", str(path), "--out", str(tmp_path / "run")])
  assert status == 2
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert err.startswith("jxent-demo: error: ")
  assert message in err
  assert str(path) in err
  assert "\n" not in err and "Traceback" not in captured.err + captured.out
  assert not (tmp_path / "run").exists()


def test_cnn_on_flat_features_gives_one_line_error(tmp_path, capsys):
  path = _digits_subset(tmp_path / "flat.npz", 100, flat=True)
  status = main(["--data", path, "--model", "cnn",
                 "--out", str(tmp_path / "run")])
  assert status == 2
  err = capsys.readouterr().err.strip()
  assert "needs images" in err and "\n" not in err


def test_bad_setting_gives_one_line_error(capsys, tmp_path):
  status = main(["--label-smoothing", "1.5", "--out", str(tmp_path)])
  assert status == 2
  err = capsys.readouterr().err.strip()
  assert err == (
      "jxent-demo: error: label smoothing must be in [0, 1), got 1.5"
  )


def test_data_split_is_stratified_and_fixed():
  a = data_lib.load_dataset(seed=0)
  b = data_lib.load_dataset(seed=0)
  np.testing.assert_array_equal(a.y_test, b.y_test)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  expected = 0.25 * np.bincount(np.concatenate([a.y_train, a.y_test]))
  assert np.all(np.abs(np.bincount(a.y_test) - expected) <= 1)


def test_expected_calibration_error_is_zero_when_calibrated():
  # Confidence 0.75 in one bin, right three times in four.
  probs = np.array([[0.75, 0.25]] * 4)
  labels = np.array([0, 0, 0, 1])
  assert metrics_lib.expected_calibration_error(probs, labels) == 0.0
