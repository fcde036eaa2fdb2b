# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Training a classifier with jxent
#
# The demo in `jxent.demo` trains a small Flax NNX network with Optax on
# scikit-learn's handwritten digits, small grayscale images. Its loss is
# `jxent.softmax_cross_entropy_with_integer_labels`, and its report uses
# jxent for every information quantity.
#
# Here we train it twice, briefly: once on one-hot targets and once with
# label smoothing. We plot the training curves, look at the test digits the
# model is least sure of, and compare the two runs for accuracy,
# calibration and the entropy floor $H(P)$. The runs are kept short so that
# the notebook executes in seconds; `python -m jxent.demo` trains longer.

# %%
import tempfile

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jxent
from jxent.demo import checkpoint, train
from jxent.demo import data as data_lib

plt.rcParams.update({"figure.dpi": 80, "axes.grid": True, "grid.alpha": 0.3})
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## Train with and without label smoothing
#
# `train_and_evaluate` takes a `Config` (the same settings as the command
# line flags) and returns the metrics it writes to `metrics.json`. The
# outputs go to a temporary folder, and the figures the command line would
# write are skipped: we draw our own below.

# %%
workdir = tempfile.TemporaryDirectory(prefix="jxent-notebook-")
settings = dict(epochs=10, model="mlp", seed=0, plots=False, progress=False,
                verbose=False)
smoothing_values = (0.0, 0.1)
results = {}
for smoothing in smoothing_values:
  config = train.Config(
      label_smoothing=smoothing,
      out=f"{workdir.name}/smoothing-{smoothing}",
      **settings,
  )
  results[smoothing] = train.train_and_evaluate(config)
  r = results[smoothing]
  print(
      f"label smoothing {smoothing}: {r['epochs']} epochs on"
      f" {r['num_train']} digits -> test accuracy"
      f" {r['test_accuracy']:.2%}"
  )

# %% [markdown]
# ## Training curves
#
# The loss the model minimises is the cross-entropy $H(P, Q)$ between the
# target $P$ and its softmax $Q$. Since $H(P, Q) = H(P) + D_{KL}(P \,\|\, Q)$,
# it can never fall below the target entropy $H(P)$. With one-hot targets
# that floor is 0. With label smoothing the target keeps some mass on every
# class, so the floor is positive, and the loss levels off above it.

# %%
fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9.6, 3.6))
for k, (smoothing, r) in enumerate(results.items()):
  epoch = [h["epoch"] for h in r["history"]]
  name = f"smoothing {smoothing}"
  for split, style in (("train", "-"), ("test", "--")):
    loss_ax.plot(epoch, [h[f"{split}_loss"] for h in r["history"]], style,
                 color=f"C{k}", label=f"{split}, {name}")
    acc_ax.plot(epoch, [h[f"{split}_accuracy"] for h in r["history"]], style,
                color=f"C{k}", label=f"{split}, {name}")
  floor = r["test_target_entropy_nats"]
  if floor > 0:
    loss_ax.axhline(floor, color=f"C{k}", linestyle=":",
                    label=f"floor H(P), {name}")
loss_ax.set_xlabel("epoch")
loss_ax.set_ylabel("loss H(P, Q) (nats)")
loss_ax.set_title("Training objective")
loss_ax.legend(fontsize="small")
acc_ax.set_xlabel("epoch")
acc_ax.set_ylabel("accuracy (fraction correct)")
acc_ax.set_title("Accuracy")
acc_ax.legend(fontsize="small")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The digits the model is least sure of
#
# The predictive entropy $H(Q)$ of the softmax says how unsure the model is
# about one example: 0 when it puts all its mass on one class, and at most
# $\log_2 K$ bits, for $K$ classes, when it cannot tell them apart. We reload the
# checkpoint of the one-hot run, predict the test digits (the demo splits
# the data with a fixed seed, so this is the same test set) and sort them by
# `jxent.entropy_from_logits`.

# %%
run = results[0.0]
model, _ = checkpoint.load(run["checkpoint"])
data = data_lib.load_dataset(seed=run["split_seed"])
logits = train.predict(model, data.x_test)
probs = np.asarray(jxent.softmax(logits))
predicted = probs.argmax(axis=-1)
entropy_bits = np.asarray(jxent.entropy_from_logits(logits, base=2))
correct = predicted == data.y_test
max_bits = float(jxent.entropy(jnp.full(data.num_classes, 1 / data.num_classes),
                               base=2))
print(f"reloaded model: test accuracy {correct.mean():.2%}"
      f" (reported: {run['test_accuracy']:.2%})")
print(f"largest possible H(Q) with {data.num_classes} classes: {max_bits:.3f} bits")
print(f"mean H(Q): right answers {entropy_bits[correct].mean():.3f} bits,"
      f" wrong answers {entropy_bits[~correct].mean():.3f} bits"
      f" ({(~correct).sum()} of {correct.size})")

# %%
order = np.argsort(entropy_bits)[::-1][:10]
fig, axes = plt.subplots(2, 5, figsize=(9.6, 5.4))
for ax, i in zip(axes.flat, order, strict=True):
  ax.imshow(data.x_test[i], cmap="gray_r", vmin=0, vmax=data.x_test.max())
  ax.set_xticks([])
  ax.set_yticks([])
  top2 = np.argsort(probs[i])[::-1][:2]
  ax.set_title(
      f"label {data.y_test[i]}, H = {entropy_bits[i]:.2f} bits\n"
      f"Q({top2[0]}) = {probs[i, top2[0]]:.2f}, Q({top2[1]}) = {probs[i, top2[1]]:.2f}",
      fontsize="small",
      color="black" if correct[i] else "C3",
  )
height, width = data.input_shape
fig.suptitle("Test digits with the highest predictive entropy"
             f" ({height}x{width} pixels; red title: misclassified)")
fig.tight_layout()
plt.show()

# %%
bins = np.linspace(0, max_bits, 31)
fig, ax = plt.subplots(figsize=(6.4, 3.4))
ax.hist(entropy_bits[correct], bins=bins, label="right answers")
ax.hist(entropy_bits[~correct], bins=bins, label="wrong answers")
ax.set_yscale("log")
ax.set_xlabel("predictive entropy H(Q) (bits)")
ax.set_ylabel("test digits (log scale)")
ax.set_title("Unsure predictions are the wrong ones more often")
ax.legend()
plt.show()

# %% [markdown]
# ## With and without label smoothing
#
# Label smoothing trains on $P = (1 - \alpha)\,\text{one-hot} + \alpha / K$
# instead of the one-hot label. Every quantity below is measured on the
# test set by the demo, with jxent:
#
# * accuracy;
# * the expected calibration error (ECE): the gap between how confident the
#   model is and how often it is right, averaged over confidence bins;
# * the entropy floor $H(P)$ of the targets, and the rest of the training
#   objective, $D_{KL}(P \,\|\, Q)$;
# * the plain test loss $-\log Q(y)$, and the predictive entropy $H(Q)$.

# %%
rows = [
    ("test accuracy", "test_accuracy", "{:.2%}"),
    ("calibration error (ECE)", "test_ece", "{:.2%}"),
    ("floor H(P) (nats)", "test_target_entropy_nats", "{:.4f}"),
    ("+ KL(P||Q) (nats)", "test_kl_divergence_nats", "{:.4f}"),
    ("= objective H(P,Q) (nats)", "test_target_cross_entropy_nats", "{:.4f}"),
    ("test loss -log Q(y) (nats)", "test_cross_entropy_nats", "{:.4f}"),
    ("predictive entropy H(Q) (nats)", "test_predictive_entropy_nats",
     "{:.4f}"),
]
header = "".join(f"{f'smoothing {s}':>16}" for s in results)
print(f"{'':32}{header}")
for name, key, fmt in rows:
  print(f"{name:32}" + "".join(f"{fmt.format(r[key]):>16}"
                               for r in results.values()))

# %% [markdown]
# The reliability diagram shows calibration directly. The test digits are
# grouped into bins by the model's top probability (its confidence), and
# each point is one bin: its mean confidence against how often the model was
# right in it, with the marker's area proportional to the number of digits.
# A calibrated model's points lie on the diagonal; points below it mean
# overconfidence, points above it underconfidence.

# %%
fig, (rel_ax, count_ax) = plt.subplots(1, 2, figsize=(9.6, 3.8))
for k, (smoothing, r) in enumerate(results.items()):
  rel = r["reliability"]
  count = np.asarray(rel["count"])
  full = count > 0
  rel_ax.scatter(
      np.asarray(rel["confidence"])[full], np.asarray(rel["accuracy"])[full],
      s=300 * count[full] / count.sum() + 8, color=f"C{k}", alpha=0.7,
      label=f"smoothing {smoothing}: ECE = {r['test_ece']:.1%}",
  )
  width = 1 / len(count)
  edges = np.asarray(rel["edges"])
  count_ax.bar(edges + width * (0.1 + 0.4 * k), count / count.sum(),
               width=0.4 * width, align="edge", color=f"C{k}",
               label=f"smoothing {smoothing}")
rel_ax.plot([0, 1], [0, 1], "k:", label="calibrated")
rel_ax.set_xlim(0, 1.02)
rel_ax.set_ylim(0, 1.02)
rel_ax.set_xlabel("mean confidence in the bin (top softmax probability)")
rel_ax.set_ylabel("accuracy in the bin (fraction correct)")
rel_ax.set_title("Reliability")
rel_ax.legend(fontsize="small", loc="lower right")
count_ax.set_yscale("log")
count_ax.set_xlim(0, 1)
count_ax.set_xlabel("confidence (top softmax probability)")
count_ax.set_ylabel("share of test digits (log scale)")
count_ax.set_title("How confident the model is")
count_ax.legend(fontsize="small", loc="upper left")
fig.tight_layout()
plt.show()

# %% [markdown]
# The bar chart puts the two runs side by side. The stacked bars are the
# training objective on the test set, split into the floor $H(P)$, which
# no model can remove, and $D_{KL}(P \,\|\, Q)$, which training shrinks.

# %%
labels = [f"smoothing {s}" for s in results]
floor = np.array([r["test_target_entropy_nats"] for r in results.values()])
kl = np.array([r["test_kl_divergence_nats"] for r in results.values()])
fig, (obj_ax, ent_ax) = plt.subplots(1, 2, figsize=(9.6, 3.4))
obj_ax.bar(labels, floor, label="floor H(P)")
obj_ax.bar(labels, kl, bottom=floor, label="$D_{KL}(P \\,\\|\\, Q)$")
obj_ax.set_ylabel("test objective H(P, Q) (nats)")
obj_ax.set_title("Objective = floor + KL")
obj_ax.legend()
x = np.arange(len(labels))
for k, (key, name) in enumerate((("test_cross_entropy_nats", "-log Q(y)"),
                                 ("test_predictive_entropy_nats", "H(Q)"))):
  ent_ax.bar(x + (k - 0.5) * 0.35, [r[key] for r in results.values()],
             width=0.35, label=name)
ent_ax.set_xticks(x, labels)
ent_ax.set_ylabel("nats per test digit")
ent_ax.set_title("Test loss and predictive entropy")
ent_ax.legend()
fig.tight_layout()
plt.show()

# %%
plain, smoothed = results[0.0], results[0.1]
print(
    f"Smoothing changes test accuracy by"
    f" {100 * (smoothed['test_accuracy'] - plain['test_accuracy']):+.2f}"
    f" percentage points and the ECE"
    f" from {plain['test_ece']:.2%} to {smoothed['test_ece']:.2%}; it raises"
    f" the floor H(P) from {plain['test_target_entropy_nats']:.3f} to"
    f" {smoothed['test_target_entropy_nats']:.3f} nats and the mean"
    f" predictive entropy H(Q) from"
    f" {plain['test_predictive_entropy_nats']:.3f} to"
    f" {smoothed['test_predictive_entropy_nats']:.3f} nats."
)
workdir.cleanup()
