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
# # From information to cross-entropy, with jxent
#
# This notebook walks from the information carried by one outcome to the
# softmax cross-entropy that trains a classifier. Every number is computed
# by a code cell with `jxent`; the text only states the ideas.
#
# 1. Information, $-\log P(x)$
# 2. Bits versus nats
# 3. Entropy as expected information
# 4. KL divergence, and why it is not symmetric
# 5. Cross-entropy: $H(P, Q) = H(P) + D_{KL}(P \,\|\, Q)$
# 6. Softmax cross-entropy in a classifier
# 7. Numerical stability: huge logits and bfloat16

# %%
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jxent

plt.rcParams.update({"figure.figsize": (6.4, 3.6), "figure.dpi": 80})
plt.rcParams.update({"axes.grid": True, "grid.alpha": 0.3})
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. Information: rare events say more
#
# The information, or surprisal, of an outcome of probability $P(x)$ is
#
# $$I(x) = -\log P(x).$$
#
# A certain outcome tells us nothing; the rarer the outcome, the more we
# learn from it. Surnames in South Korea make the point. *Kim* is by far the
# most common surname, so hearing that someone is a Kim says little about
# who they are. *Maeng* is rare, so hearing that someone is a Maeng narrows
# things down a great deal.
#
# The population counts below are the data. The count for Kim comes from
# the 2015 Population and Housing Census by Statistics Korea (KOSIS), which
# recorded surnames. The count for Maeng is **approximate**: a round figure
# of the right order of magnitude, not a census count, so its share and
# information are approximate too.

# %%
population = 49.7e6  # Korean nationals counted by surname, 2015 census
surname_count = {
    "Kim": 10.7e6,  # 2015 census, Statistics Korea (KOSIS)
    "Maeng": 2.0e4,  # approximate, on the order of 20,000 people
}
share = {name: count / population for name, count in surname_count.items()}
surprisal = {
    name: jxent.information(jnp.asarray(p), base=2) for name, p in share.items()
}
for name in surname_count:
  print(
      f"{name:>6}: share {share[name]:.3%} -> information"
      f" {surprisal[name]:.2f} bits"
  )
ratio = surprisal["Maeng"] / surprisal["Kim"]
print(f"Learning 'Maeng' carries {ratio:.1f} times the information of 'Kim'.")

# %% [markdown]
# ## 2. Bits versus nats
#
# The unit is set by the base of the logarithm: base 2 gives **bits**, the
# natural logarithm gives **nats** (jxent's default; `base=2` gives bits).
# A fair coin landing heads carries one bit, and a fair die landing six
# carries $\log_2 6$ bits. One nat is $1/\ln 2$ bits.

# %%
coin_heads = jxent.information(jnp.asarray(1 / 2), base=2)
die_six = jxent.information(jnp.asarray(1 / 6), base=2)
print(f"coin lands heads: {coin_heads:.3f} bits = {jxent.information(0.5):.3f} nats")
print(f"die lands six:    {die_six:.3f} bits = {jxent.information(1 / 6):.3f} nats")
bits_per_nat = jxent.information(jnp.exp(-1.0), base=2)  # one nat, in bits
print(f"1 nat = {bits_per_nat:.4f} bits")

# %%
p = jnp.logspace(-5, 0, 400)
fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.6))
left.plot(p, jxent.information(p, base=2), label="bits: $-\\log_2 p$")
left.plot(p, jxent.information(p), label="nats: $-\\ln p$")
left.set_xlim(0, 1)
left.set_ylim(0, 8)
left.set_xlabel("probability p of the outcome")
left.set_ylabel("information (bits or nats)")
left.set_title("Information of one outcome")
left.legend()

right.semilogx(p, jxent.information(p, base=2), color="C0")
events = {"coin: heads": 1 / 2, "die: six": 1 / 6} | {
    f"surname: {name}": p_name for name, p_name in share.items()
}
for k, (label, p_event) in enumerate(events.items()):
  bits = jxent.information(jnp.asarray(p_event), base=2)
  right.plot(p_event, bits, "o", color=f"C{k + 1}", label=f"{label} ({bits:.2f})")
right.set_xlabel("probability p of the outcome (log scale)")
right.set_ylabel("information $-\\log_2 p$ (bits)")
right.set_title("Rare outcomes carry more bits")
right.legend(fontsize="small")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Entropy: the expected information
#
# Entropy is the information we expect from one draw:
#
# $$H(P) = \sum_x P(x)\, I(x) = -\sum_x P(x) \log P(x).$$
#
# For a coin that lands heads with probability $p$, the entropy is largest
# for a fair coin and falls to zero when the outcome is certain.

# %%
p_heads = jnp.linspace(0, 1, 201)
coins = jnp.stack([p_heads, 1 - p_heads], axis=-1)
binary_entropy = jxent.entropy(coins, base=2)
fair = jxent.entropy(jnp.array([0.5, 0.5]), base=2)
print(f"fair coin: {fair:.3f} bits; certain coin: {binary_entropy[0]:.3f} bits")

fig, ax = plt.subplots()
ax.plot(p_heads, binary_entropy)
ax.plot(0.5, fair, "o", color="C3", label=f"fair coin: {fair:.2f} bit")
ax.set_xlabel("probability of heads, p")
ax.set_ylabel("entropy H(p) (bits)")
ax.set_title("Binary entropy")
ax.legend()
plt.show()

# %% [markdown]
# A fair die is as unpredictable as a six-sided die can be. A loaded die that
# lands six far more often than any other face is easier to guess, so each roll tells us less on
# average. The entropy is the information of each face, weighted by how
# often it comes up.

# %%
faces = np.arange(1, 7)
fair_die = jnp.full(6, 1 / 6)
loaded_die = jnp.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.5])
dice = {"fair die": fair_die, "loaded die": loaded_die}
entropy_bits = {name: jxent.entropy(d, base=2) for name, d in dice.items()}
for name, d in dice.items():
  expected = jnp.sum(d * jxent.information(d, base=2))
  print(
      f"{name:>10}: H = {entropy_bits[name]:.3f} bits"
      f" (sum of P(x) I(x) = {expected:.3f} bits)"
  )

fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.2), sharey=True)
for ax, (name, d) in zip(axes, dice.items(), strict=True):
  ax.bar(faces, d, color="C0")
  ax.set_xticks(faces)
  ax.set_xlabel("face")
  ax.set_title(f"{name}: H = {entropy_bits[name]:.3f} bits")
axes[0].set_ylabel("probability")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. KL divergence is not symmetric
#
# The Kullback-Leibler divergence measures the extra information we pay,
# on average, when outcomes come from $P$ but we code (or predict) them
# with $Q$:
#
# $$D_{KL}(P \,\|\, Q) = \sum_x P(x) \log \frac{P(x)}{Q(x)}.$$
#
# jxent takes the data distribution $P$ first: `jxent.kl_divergence(p, q)`
# is $D_{KL}(P \,\|\, Q)$. Swapping the arguments changes the answer. Take
# the fair and the loaded die:

# %%
kl_fair_loaded = jxent.kl_divergence(fair_die, loaded_die, base=2)
kl_loaded_fair = jxent.kl_divergence(loaded_die, fair_die, base=2)
print(f"D_KL(fair || loaded) = {kl_fair_loaded:.4f} bits")
print(f"D_KL(loaded || fair) = {kl_loaded_fair:.4f} bits")

# %% [markdown]
# Now keep a coin $P$ fixed and move a second coin $Q$ from one extreme to the
# other. Both divergences vanish only at $Q = P$. Where $Q$ puts almost no
# mass on an outcome that $P$ expects, $D_{KL}(P \,\|\, Q)$ blows up, while
# $D_{KL}(Q \,\|\, P)$ stays bounded.

# %%
p_coin = jnp.array([0.3, 0.7])
q_heads = jnp.linspace(0.001, 0.999, 500)
q_coins = jnp.stack([q_heads, 1 - q_heads], axis=-1)
forward = jxent.kl_divergence(p_coin, q_coins, base=2)
reverse = jxent.kl_divergence(q_coins, p_coin, base=2)
print(f"P = {p_coin}; at Q(heads) = {q_heads[0]:.3f}:")
print(f"  D_KL(P || Q) = {forward[0]:.3f} bits, D_KL(Q || P) = {reverse[0]:.3f} bits")

fig, ax = plt.subplots()
ax.plot(q_heads, forward, label="$D_{KL}(P \\,\\|\\, Q)$")
ax.plot(q_heads, reverse, label="$D_{KL}(Q \\,\\|\\, P)$")
ax.axvline(p_coin[0], color="gray", linestyle=":", label="Q = P")
ax.set_ylim(0, 4)
ax.set_xlabel("Q(heads), with P(heads) fixed")
ax.set_ylabel("divergence (bits)")
ax.set_title(f"KL divergence as Q moves; P(heads) = {p_coin[0]:.1f}")
ax.legend()
plt.show()

# %% [markdown]
# ## 5. Cross-entropy = entropy + KL divergence
#
# The cross-entropy is the average information when outcomes come from $P$
# and we pay $-\log Q(x)$ for each:
#
# $$H(P, Q) = -\sum_x P(x) \log Q(x) = H(P) + D_{KL}(P \,\|\, Q).$$
#
# $H(P)$ is a floor set by the data; the model can only reduce the KL part.
# We check the identity on the dice and on a batch of random pairs.

# %%
h_pq = jxent.cross_entropy(fair_die, loaded_die, base=2)
h_p = jxent.entropy(fair_die, base=2)
print(
    f"H(fair, loaded) = {h_pq:.4f} bits;"
    f" H(fair) + D_KL(fair || loaded) = {h_p + kl_fair_loaded:.4f} bits"
)

rng = np.random.default_rng(0)
p_batch = jnp.asarray(rng.dirichlet(np.ones(10), size=1000), jnp.float32)
q_batch = jnp.asarray(rng.dirichlet(np.ones(10), size=1000), jnp.float32)
gap = jxent.cross_entropy(p_batch, q_batch) - (
    jxent.entropy(p_batch) + jxent.kl_divergence(p_batch, q_batch)
)
print(f"1000 random pairs over 10 classes: max |H(P,Q) - H(P) - KL| = {jnp.max(jnp.abs(gap)):.1e} nats")

# %%
mix = jnp.linspace(0, 1, 6)
q_path = (1 - mix[:, None]) * fair_die + mix[:, None] * loaded_die
h_p_path = jnp.broadcast_to(h_p, mix.shape)
kl_path = jxent.kl_divergence(fair_die, q_path, base=2)
ce_path = jxent.cross_entropy(fair_die, q_path, base=2)

fig, ax = plt.subplots()
ax.bar(mix, h_p_path, width=0.12, label="H(P)")
ax.bar(mix, kl_path, width=0.12, bottom=h_p_path, label="$D_{KL}(P \\,\\|\\, Q)$")
ax.plot(mix, ce_path, "k_", markersize=22, markeredgewidth=2, label="H(P, Q)")
ax.set_ylim(0, 1.3 * float(ce_path.max()))
ax.set_xlabel("weight of the loaded die in Q (P = fair die)")
ax.set_ylabel("information (bits)")
ax.set_title("Cross-entropy stacks on the entropy floor")
ax.legend(loc="upper center", ncols=3)
plt.show()

# %% [markdown]
# ## 6. Softmax cross-entropy in a classifier
#
# A classifier with four classes sees an example of class 0, so the target
# is the one-hot $P = [1, 0, 0, 0]$. The model predicts
# $Q = [0.7, 0.1, 0.05, 0.15]$, as the softmax of its logits. The loss is
# $H(P, Q) = -\log Q(0)$, and with one-hot labels $H(P) = 0$.

# %%
label = jnp.array([1.0, 0.0, 0.0, 0.0])
prediction = jnp.array([0.7, 0.1, 0.05, 0.15])
logits = jnp.log(prediction)  # any logits with this softmax would do

loss = jxent.softmax_cross_entropy(logits, label)
print(f"loss from logits    = {loss:.4f} nats = {loss / math.log(2):.4f} bits")
print(f"H(P, Q) from probs  = {jxent.cross_entropy(label, prediction):.4f} nats")
print(f"-log Q(0)           = {jxent.information(prediction[0]):.4f} nats")
print(f"integer label 0     = {jxent.softmax_cross_entropy_with_integer_labels(logits, jnp.array(0)):.4f} nats")
print(f"H(P) (the floor)    = {jxent.entropy(label):.4f} nats")

# %% [markdown]
# The gradient of the loss with respect to the logits is simply
# $\operatorname{softmax}(z) - P$: push up the logit of the right class,
# push down the others in proportion to the probability they took.

# %%
grad = jax.grad(jxent.softmax_cross_entropy)(logits, label)
print("jax.grad on the logits:", grad)
print("softmax(z) - P:        ", jxent.softmax(logits) - label)

# %% [markdown]
# Gradient descent on the logits moves $Q$ towards $P$, and the loss falls
# towards its floor $H(P)$. With a one-hot target the floor is 0. With label
# smoothing the target keeps some mass on every class, so $H(P) > 0$ and the
# loss can never go below it: the rest, $D_{KL}(P \,\|\, Q)$, is all that
# training removes.

# %%
smoothing = 0.1
smoothed = (1 - smoothing) * label + smoothing / label.size
print("smoothed target P:", smoothed)


def descend(target, steps=200, learning_rate=1.0):
  """Plain gradient descent on the logits; returns Q and the loss per step."""
  loss_and_grad = jax.value_and_grad(jxent.softmax_cross_entropy)

  def step(z, _):
    value, g = loss_and_grad(z, target)
    return z - learning_rate * g, (jxent.softmax(z), value)

  _, (qs, losses) = jax.lax.scan(step, logits, length=steps)
  return qs, losses


targets = {"one-hot": label, f"smoothed ({smoothing})": smoothed}
runs = {name: descend(target) for name, target in targets.items()}
for name, target in targets.items():
  qs, losses = runs[name]
  print(
      f"{name:>16}: loss {losses[0]:.4f} -> {losses[-1]:.4f} nats,"
      f" floor H(P) = {jxent.entropy(target):.4f} nats,"
      f" final Q = {qs[-1]}"
  )

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.6))
for k, (name, target) in enumerate(targets.items()):
  qs, losses = runs[name]
  left.plot(losses, color=f"C{k}", label=f"H(P, Q), {name}")
  left.axhline(jxent.entropy(target), color=f"C{k}", linestyle="--",
               label=f"floor H(P), {name}")
left.set_ylim(bottom=-0.02)
left.set_xlabel("gradient step")
left.set_ylabel("cross-entropy (nats)")
left.set_title("The loss falls to H(P)")
left.legend(fontsize="small")

qs, _ = runs["one-hot"]
for c in range(label.size):
  right.plot(qs[:, c], label=f"Q(class {c}), target {label[c]:.0f}")
right.set_xlabel("gradient step")
right.set_ylabel("predicted probability")
right.set_title("Q moves towards the one-hot P")
right.legend(fontsize="small")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Numerical stability
#
# ### Huge logits
#
# Every jxent function goes through one log-sum-exp,
# $\log \sum_i e^{x_i}$. Computed as written, $e^{x}$ overflows to infinity
# in float32 for large logits and underflows to zero for very negative ones.
# The stable form shifts by the maximum first: $m + \log \sum_i e^{x_i - m}$.
#
# Where does float32 run out? Its largest number sets the overflow. At the
# other end there are two thresholds: below the smallest *normal* number
# float32 still has *subnormal* numbers, with fewer significant bits, down to
# the smallest subnormal. Whether a computation keeps subnormals depends on
# where it runs, so the cell below asks NumPy and JAX for the same float32
# numbers.

# %%
def naive_logsumexp(x):
  return jnp.log(jnp.sum(jnp.exp(x), axis=-1))


big = jnp.array([1000.0, 1000.0, 999.0])
print("logits:", big)
print("naive log(sum(exp(x))):", naive_logsumexp(big))
print("jxent.logsumexp(x):    ", jxent.logsumexp(big))
naive_softmax = jnp.exp(big) / jnp.sum(jnp.exp(big))
print("naive softmax:", naive_softmax, " jxent.softmax:", jxent.softmax(big))
loss2 = jxent.softmax_cross_entropy_with_integer_labels(big, jnp.array(2))
print(f"jxent loss for class 2: {loss2:.4f} nats")

f32 = np.finfo(np.float32)
print(f"\nfloat32 exp(x) overflows to inf above x = {math.log(f32.max):.2f}")
print(
    f"exp(x) < {f32.tiny:.3g}, the smallest normal float32,"
    f" below x = {math.log(f32.tiny):.2f}"
)
print(
    f"exp(x) < {f32.smallest_subnormal:.2g}, the smallest subnormal,"
    f" below x = {math.log(f32.smallest_subnormal):.2f}"
)
platform = jax.devices()[0].platform
x_sub = -90.0
tiny_product = jnp.float32(2e-38) * jnp.float32(0.25)
print(
    f"exp({x_sub}) in float32: NumPy {np.exp(np.float32(x_sub)):.3g},"
    f" JAX on {platform} {jnp.exp(jnp.float32(x_sub)):.3g}"
)
print(
    f"2e-38 * 0.25 in float32: NumPy {np.float32(2e-38) * np.float32(0.25):.3g},"
    f" JAX on {platform} {tiny_product:.3g}"
)

# %% [markdown]
# In the run stored here, on a CPU, NumPy keeps the subnormal results and
# JAX gives 0 for both. XLA runs CPU computations with subnormal numbers
# *flushed to zero*, a common setting for speed, so there float32 $e^{x}$ is
# 0 as soon as it leaves the normal range, well before the smallest
# subnormal. A device or setting that keeps subnormals underflows only near
# the subnormal threshold; the lines printed above say which case a run is.
#
# The plot shifts the logits $x = c + [0, -1, -2]$ by an offset $c$, so the
# exact $\operatorname{LSE}(x) - c$ is the same for every $c$. The naive form
# gives $+\infty$ once $e^{c}$ overflows and $-\infty$ once all three
# exponentials are 0; just before that, it is finite but wrong, as the
# smaller terms are already 0. jxent stays on the exact value everywhere, to
# within the rounding of float32 numbers as large as the offsets (both
# printed below).

# %%
offset = jnp.linspace(-300, 300, 601)
rows = offset[:, None] + jnp.array([0.0, -1.0, -2.0])
naive = naive_logsumexp(rows) - offset
stable = jxent.logsumexp(rows) - offset
exact = math.log(sum(math.exp(-k) for k in range(3)))
broken = ~jnp.isfinite(naive)
finite_offsets = offset[~broken]
print(f"exact value of LSE(x) - c: {exact:.6f}")
print(
    f"naive is not finite at {int(broken.sum())} of {offset.size} offsets;"
    f" it is finite only for {finite_offsets.min():.0f} <= c <="
    f" {finite_offsets.max():.0f}"
)
first = int(jnp.argmax(~broken))
smaller_terms = jnp.exp(rows[first, 1:])
print(
    f"naive at c = {offset[first]:.0f}: {naive[first]:.4f}, finite but wrong:"
    f" e^(c - 1) and e^(c - 2) are {smaller_terms}"
)
largest = np.float32(offset.max())
print(
    f"jxent: max error {jnp.max(jnp.abs(stable - exact)):.1e}; float32"
    f" numbers near {largest:.0f} are {np.spacing(largest):.1e} apart"
)

fig, ax = plt.subplots()
ax.plot(offset, stable, label="jxent.logsumexp", linewidth=3)
ax.plot(offset, jnp.where(broken, jnp.nan, naive), "--", label="naive log(sum(exp))")
ax.fill_between(offset, 0, 1, where=broken, color="C3", alpha=0.15,
                transform=ax.get_xaxis_transform(), label="naive gives ±inf")
ax.set_ylim(0, 1)
ax.set_xlabel("offset c of the logits x = c + [0, -1, -2]")
ax.set_ylabel("LSE(x) - c (nats)")
ax.set_title(f"log-sum-exp in float32, JAX on {platform}")
ax.legend(loc="upper center")
plt.show()

# %% [markdown]
# ### bfloat16
#
# bfloat16 keeps few significant bits, so its numbers are coarsely spaced
# (the spacing is printed below). A confident prediction has a small loss,
# $\log\left(1 + \sum_{c \ne y} e^{z_c - z_y}\right)$, and a naive bfloat16
# computation that forms $\operatorname{LSE}(z) = m + \log \sum e^{z - m}$
# and then subtracts $z_y$ rounds that small number away: the loss becomes
# exactly zero, and so does its gradient on the right class's logit, the
# signal that would make the prediction more confident. jxent upcasts 16-bit
# inputs and accumulates in float32, and never subtracts two large numbers,
# so its loss stays positive and its *absolute* error stays at float32
# precision.
#
# Its *relative* error on a tiny loss is larger, as the cells below show.
# When the right class has the largest logit, jxent computes the loss as
# $\log S$ with $S = \sum_c e^{z_c - z_y} = 1 + \sum_{c \ne y} e^{z_c - z_y}$,
# a float32 number just above 1. Each addition to $S$ rounds the sum to a
# multiple of the spacing of float32 numbers near 1 (printed below), while
# the loss is $\log S \approx S - 1$, the small part: an error that is
# negligible next to 1 is not negligible next to a loss that small. Summing
# the other classes' terms on their own and taking $\operatorname{log1p}$ of
# that sum, which computes $\log(1 + s)$ without ever forming $1 + s$, keeps
# the small number's significant bits.
#
# Below, one row of logits per margin $m$: the right class has logit $m$,
# the others 0, all stored in bfloat16. Besides jxent and a naive bfloat16
# computation, two float32 computations: $\log S$, jxent's formula, and
# $\operatorname{log1p}$ of the other classes' sum.

# %%
margin = jnp.arange(0.0, 12.01, 0.25)
classes = 10
logits_bf16 = (
    jnp.zeros((margin.size, classes)).at[:, 0].set(margin).astype(jnp.bfloat16)
)
labels0 = jnp.zeros(margin.size, jnp.int32)
z64 = np.asarray(logits_bf16, np.float64)  # the same bfloat16 values, exactly
reference = np.log(np.sum(np.exp(z64 - z64[:, :1]), axis=-1))


def naive_loss(z, y):
  """-log Q(y) as LSE(z) - z_y, every step in the dtype of z."""
  m = jnp.max(z, axis=-1)
  lse = m + jnp.log(jnp.sum(jnp.exp(z - m[:, None]), axis=-1))
  return lse - jnp.take_along_axis(z, y[:, None], axis=-1)[:, 0]


def absolute_error(loss):
  return np.abs(np.asarray(loss, np.float64) - reference)


def relative_error(loss):
  return absolute_error(loss) / reference


naive_bf16 = naive_loss(logits_bf16, labels0)
jxent_loss = jxent.softmax_cross_entropy_with_integer_labels(
    logits_bf16, labels0
)
# The right class, 0, has the largest logit, so z - z_0 is the shift by the max.
shifted = logits_bf16.astype(jnp.float32) - logits_bf16[:, :1].astype(jnp.float32)
log_of_sum_f32 = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))  # log S
log1p_f32 = jnp.log1p(jnp.sum(jnp.exp(shifted[:, 1:]), axis=-1))

eight = jnp.asarray(8.0, jnp.bfloat16)
step = float(jnp.nextafter(eight, jnp.asarray(16.0, jnp.bfloat16)) - eight)
print(
    f"bfloat16 keeps {jnp.finfo(jnp.bfloat16).nmant + 1} significant bits;"
    f" numbers near {eight} are {step} apart"
)
spacing_at_1 = float(np.spacing(np.float32(1)))
print(f"float32 numbers near 1 are {spacing_at_1:.3g} apart")
print("dtypes: naive", naive_bf16.dtype, "| jxent", jxent_loss.dtype)
print(f"the loss falls from {reference[0]:.3g} to {reference[-1]:.3g} nats")
print("error against the float64 reference, max over the margins:")
computations = {
    "naive bfloat16": naive_bf16,
    "jxent": jxent_loss,
    "float32 log S": log_of_sum_f32,
    "float32 log1p(S - 1)": log1p_f32,
}
for name, loss in computations.items():
  worst = relative_error(loss).argmax()
  print(
      f"  {name:>20}: absolute {absolute_error(loss).max():.2e} nats,"
      f" relative {relative_error(loss).max():.2e}"
      f" (at m = {margin[worst]:.2f}, loss {reference[worst]:.2e})"
  )
same = bool(jnp.all(jxent_loss == log_of_sum_f32))
print(f"jxent equals float32 log S at every margin: {same}")
worst = relative_error(jxent_loss).argmax()
s_minus_1 = math.expm1(float(jxent_loss[worst]))
s_minus_1_exact = math.expm1(reference[worst])
print(
    f"at m = {margin[worst]:.2f}: jxent's S - 1 = {s_minus_1:.4e}, exactly"
    f" {s_minus_1_exact:.4e}: off by"
    f" {abs(s_minus_1 - s_minus_1_exact) / spacing_at_1:.1f} float32 spacings near 1"
)
zero = np.asarray(naive_bf16) <= 0
print(
    f"naive loss is <= 0 for {zero.sum()} of {margin.size} margins, from"
    f" m = {margin[zero.argmax()]:.2f} on; jxent is > 0 for all of them:"
    f" {bool(jnp.all(jxent_loss > 0))}"
)


def total_loss(z):
  return jnp.sum(jxent.softmax_cross_entropy_with_integer_labels(z, labels0))


grad_bf16 = jax.grad(total_loss)(logits_bf16)
print("the gradient keeps the input dtype:", grad_bf16.dtype)
naive_grad = jax.grad(lambda z: jnp.sum(naive_loss(z, labels0)))(logits_bf16)
print(
    "where the naive loss is <= 0, its gradient on the right class's logit"
    f" is 0: {bool(jnp.all(naive_grad[zero, 0] == 0))}; jxent's is nonzero:"
    f" {bool(jnp.all(grad_bf16[zero, 0] != 0))}"
)

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.6))
left.semilogy(margin, reference, "k", label="float64 reference")
left.semilogy(margin, jxent_loss, "o", markersize=4, label="jxent, bfloat16 input")
left.semilogy(margin, np.where(zero, np.nan, naive_bf16), "x",
              label="naive bfloat16 (missing where the loss is ≤ 0)")
left.set_xlabel("margin m of the right class's logit (nats)")
left.set_ylabel("loss -log Q(y) (nats, log scale)")
left.set_title("A confident prediction in bfloat16")
left.legend(fontsize="small")

right.semilogy(margin, relative_error(jxent_loss), "o", markersize=4,
               label="jxent (float32 log S)")
right.semilogy(margin, relative_error(log1p_f32), "s", markersize=3,
               label="float32 log1p(S - 1)")
right.semilogy(margin, spacing_at_1 / reference, "k:",
               label="float32 spacing near 1 / loss")
right.set_xlabel("margin m of the right class's logit (nats)")
right.set_ylabel("relative error against float64")
right.set_title("Relative error of the loss")
right.legend(fontsize="small")
fig.tight_layout()
plt.show()

# %% [markdown]
# The dotted curve is the float32 spacing near 1 divided by the loss.
# jxent's relative error follows it because its absolute error is a few such
# spacings at every margin (the count at the worst margin is printed
# above): it is at float32 precision next to 1, not next to the loss. The
# $\operatorname{log1p}$ form keeps the relative error at float32's relative
# precision at every margin.
