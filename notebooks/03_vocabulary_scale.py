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
# # Language-model heads at vocabulary scale
#
# The last layer of a language model turns each token's hidden state $x$
# into logits $z = x W + b$ over the whole vocabulary. Every loss of the
# earlier notebooks starts from those logits. With a large vocabulary they
# are the largest tensor of a training step, and jxent's `linear_*`
# functions compute the losses from $x$ and $W$ without ever forming them.
#
# 1. The logits are the largest tensor, and how to avoid them
# 2. Distilling a teacher into a smaller student with `linear_kl_divergence`
# 3. Policy log-probabilities and entropy, for RL, with `linear_log_probs`
# 4. Compiled memory against vocabulary size
#
# The models are toys, small enough to train on a CPU in seconds, and the
# memory in section 4 is read from the compiler without running anything.

# %%
import functools
import math
import os
import platform

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import jxent

plt.rcParams.update({"figure.figsize": (6.4, 3.6), "figure.dpi": 80})
plt.rcParams.update({"axes.grid": True, "grid.alpha": 0.3})
np.set_printoptions(precision=4, suppress=True)
print(f"jax {jax.__version__}, backend: {jax.default_backend()}")

# %% [markdown]
# ## 1. The logits are the largest tensor
#
# Take a batch of 8 sequences of 4096 tokens, a hidden size of 4096 and a
# vocabulary of 152,000 tokens, the size of recent multilingual
# vocabularies. In float32, the hidden states $x$ [tokens, hidden], the
# output projection $W$ [hidden, vocabulary] and the logits $z$ [tokens,
# vocabulary] take:

# %%
tokens, hidden, vocab = 8 * 4096, 4096, 152_000
float32_bytes = 4
sizes = {
    "hidden states x": tokens * hidden * float32_bytes,
    "projection W": hidden * vocab * float32_bytes,
    "logits z = x W": tokens * vocab * float32_bytes,
}
for name, size in sizes.items():
  print(f"{name:>16}: {size / 1e9:6.2f} GB")

# %% [markdown]
# And that is one copy. A training step that materialises the logits keeps
# more than one: the logits, the gradient with respect to them,
# $\partial \ell / \partial z = \operatorname{softmax}(z) - \text{one-hot}(y)$,
# which has the same shape, and often a float32 copy of bfloat16 logits.
# Section 4 counts the copies the compiler keeps.
#
# Yet each token's loss needs only a few numbers: the log-sum-exp of its
# logits and the logit of its label. The log-sum-exp can be computed one
# block of columns at a time, keeping a running maximum $m$ and a running
# sum $s$ of $e^{z - m}$ per token. A new block $z_B$ updates them as
#
# $$m' = \max\left(m, \max_{v \in B} z_v\right), \qquad
# s' = s\, e^{m - m'} + \sum_{v \in B} e^{z_v - m'},$$
#
# and at the end $\operatorname{LSE}(z) = m + \log s$. So only one block,
# $x W_B$ of shape [tokens, block], is alive at a time. The backward pass
# walks the blocks again: it recomputes $z_B$, forms its gradient
# $\operatorname{softmax}(z)_B - \text{one-hot}(y)_B$, adds its share to
# $\partial \ell / \partial x$ and writes the columns $B$ of
# $\partial \ell / \partial W$. The same walk gives the entropy and the KL
# divergence, which need a few more running sums.
#
# Here is the online log-sum-exp in a few lines of NumPy, checked against
# `jxent.logsumexp`:

# %%
rng = np.random.default_rng(0)
z = 10 * rng.normal(size=(4, 1000)).astype(np.float32)
m = np.full(4, -np.inf, np.float32)
s = np.zeros(4, np.float32)
for start in range(0, z.shape[1], 256):  # blocks of 256 columns
  block = z[:, start:start + 256]
  m_new = np.maximum(m, block.max(axis=1))
  s = s * np.exp(m - m_new) + np.exp(block - m_new[:, None]).sum(axis=1)
  m = m_new
print("blockwise:      ", m + np.log(s))
print("jxent.logsumexp:", np.asarray(jxent.logsumexp(z, axis=1)))

# %% [markdown]
# ## 2. Distilling a teacher into a smaller student
#
# ### A toy language with a known entropy
#
# Our corpus comes from a Markov source over $V = 512$ tokens: each token
# is drawn given the one before it, from a fixed transition matrix. Its log
# transition matrix is a rank-16 product of random matrices, scaled up so
# that each row is far from uniform. Because we know the source, we know
# the best possible cross-entropy of any next-token model, the conditional
# entropy $H(\text{next} \mid \text{previous})$: no model can beat it on
# average.

# %%
V, RANK = 512, 16
source_rng = np.random.default_rng(0)
log_transitions = 3.0 * (
    source_rng.normal(size=(V, RANK)) @ source_rng.normal(size=(RANK, V))
) / math.sqrt(RANK)
transitions = np.asarray(jxent.softmax(jnp.asarray(log_transitions, jnp.float32)))

# 1024 chains of 200 tokens, sampled in parallel with inverse CDFs.
chains, length = 1024, 200
cdf = np.cumsum(transitions, axis=1)
corpus = np.empty((chains, length), np.int32)
corpus[:, 0] = source_rng.integers(V, size=chains)
uniform = source_rng.random((chains, length))
for t in range(1, length):
  draws = (cdf[corpus[:, t - 1]] < uniform[:, t, None]).sum(axis=1)
  corpus[:, t] = np.minimum(draws, V - 1)

previous, following = corpus[:, :-1].ravel(), corpus[:, 1:].ravel()
n_test = 20_000
train_prev, train_next = previous[:-n_test], following[:-n_test]
test_prev, test_next = previous[-n_test:], following[-n_test:]
floor = float(jnp.mean(jxent.entropy(jnp.asarray(transitions[test_prev]))))
print(f"{train_prev.size} training pairs, {test_prev.size} held-out pairs")
print(f"floor H(next | previous) on the held-out contexts: {floor:.3f} nats"
      f", the uncertainty of a uniform choice among {math.exp(floor):.0f}"
      " tokens")
print(f"for comparison, a uniform guess: log V = {math.log(V):.3f} nats")

# %% [markdown]
# ### Teacher and student
#
# Both models embed the previous token, pass it through one tanh layer to
# a hidden state $h$, and end in a linear head $W$ of shape
# [hidden, $V$]. Their logits $h W$ form a matrix of rank at most the
# hidden size: the teacher's hidden size is 64, enough for the rank-16
# source, and the student's is 8, which is not. The student can only
# approximate the teacher.
#
# The teacher is trained on the corpus with
# `jxent.linear_softmax_cross_entropy(h, W, next_tokens)`: the
# cross-entropy of the logits $h W$, without the logits.

# %%
def init_model(key, embed_size, hidden_size):
  """An embedding, a tanh layer and an output head over V tokens."""
  k_embed, k_layer, k_head = jax.random.split(key, 3)
  return {
      "embed": jax.random.normal(k_embed, (V, embed_size)),
      "layer": jax.random.normal(k_layer, (embed_size, hidden_size))
               / math.sqrt(embed_size),
      "layer_bias": jnp.zeros(hidden_size),
      "head": 0.1 * jax.random.normal(k_head, (hidden_size, V))
              / math.sqrt(hidden_size),
  }


def hidden_states(params, prev):
  """The hidden state h of each context token, shape [tokens, hidden]."""
  return jnp.tanh(params["embed"][prev] @ params["layer"]
                  + params["layer_bias"])


def train(params, loss_fn, steps=600, batch_size=512, seed=0):
  """Adam on random minibatches of the training pairs; returns the losses."""
  optimizer = optax.adam(optax.cosine_decay_schedule(1e-2, steps))

  @jax.jit
  def step(params, opt_state, prev, nxt):
    loss, grads = jax.value_and_grad(loss_fn)(params, prev, nxt)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  batches = np.random.default_rng(seed).integers(
      train_prev.size, size=(steps, batch_size))
  losses = []
  for rows in batches:
    params, opt_state, loss = step(params, opt_state, train_prev[rows],
                                   train_next[rows])
    losses.append(loss)
  return params, np.asarray(losses)


def teacher_loss(params, prev, nxt):
  return jxent.linear_softmax_cross_entropy(
      hidden_states(params, prev), params["head"], nxt)


teacher, teacher_curve = train(init_model(jax.random.key(0), 32, 64),
                               teacher_loss)
print(f"teacher: training cross-entropy {teacher_curve[0]:.3f} ->"
      f" {teacher_curve[-20:].mean():.3f} nats (mean of the last 20 steps)")

# %% [markdown]
# ### Distillation with the forward KL divergence
#
# The student never sees the next tokens. On each training context it
# matches the teacher's whole next-token distribution $P$ with its own
# $Q$ by minimising the forward KL divergence,
#
# $$D_{KL}(P \,\|\, Q) = \sum_v P(v) \left(\log P(v) - \log Q(v)\right),$$
#
# averaged over the tokens. `jxent.linear_kl_divergence(p_x, p_w, q_x,
# q_w)` computes it from the two heads: P's hidden states and projection
# first, then Q's. The hidden sizes differ (64 and 8); only the vocabulary
# must match. The teacher is frozen: its parameters are a constant of the
# loss, not an argument of `jax.grad`, so no gradient is computed for them.

# %%
def student_loss(params, prev, nxt):
  del nxt  # the teacher's distribution is the target, not the data
  return jxent.linear_kl_divergence(
      hidden_states(teacher, prev), teacher["head"],
      hidden_states(params, prev), params["head"], reduction="mean")


student, student_curve = train(init_model(jax.random.key(1), 16, 8),
                               student_loss, seed=1)
print(f"student: KL(teacher || student) {student_curve[0]:.3f} ->"
      f" {student_curve[-20:].mean():.3f} nats (mean of the last 20 steps)")

# %%
fig, (ce_ax, kl_ax) = plt.subplots(1, 2, figsize=(9.6, 3.6))
ce_ax.plot(teacher_curve, color="C0", linewidth=0.8)
ce_ax.axhline(floor, color="k", linestyle=":", label="floor H(next | previous)")
ce_ax.set_xlabel("training step")
ce_ax.set_ylabel("cross-entropy (nats)")
ce_ax.set_title("Teacher: linear_softmax_cross_entropy")
ce_ax.legend()
kl_ax.plot(student_curve, color="C1", linewidth=0.8)
kl_ax.set_xlabel("training step")
kl_ax.set_ylabel("$D_{KL}$(teacher || student) (nats)")
kl_ax.set_title("Student: linear_kl_divergence")
fig.tight_layout()
plt.show()

# %% [markdown]
# The fused loss is the KL divergence of the logits, computed without them.
# Once, on 1024 training contexts, we form both heads' logits, $h W$ of
# shape [1024, 512], and compare `linear_kl_divergence` per token, and its
# gradient with respect to the student, with the materialised
# `jxent.kl_divergence_from_logits(p_logits, q_logits)` (P first there
# too).

# %%
check_prev = train_prev[:1024]


def mean_kl(params, teacher, prev, materialise):
  """The mean KL over the contexts, and the KL of each."""
  h_p, w_p = hidden_states(teacher, prev), teacher["head"]
  h_q, w_q = hidden_states(params, prev), params["head"]
  if materialise:
    per_token = jxent.kl_divergence_from_logits(h_p @ w_p, h_q @ w_q)
  else:
    per_token = jxent.linear_kl_divergence(h_p, w_p, h_q, w_q)
  return per_token.mean(), per_token


kl_check = jax.jit(jax.grad(mean_kl, has_aux=True),
                   static_argnames="materialise")
grads, fused_kl = kl_check(student, teacher, check_prev, materialise=False)
grads_ref, materialised_kl = kl_check(student, teacher, check_prev,
                                      materialise=True)
print(f"mean KL: fused {fused_kl.mean():.6f},"
      f" materialised {materialised_kl.mean():.6f} nats")
print("max |fused - materialised| per token:"
      f" {jnp.max(jnp.abs(fused_kl - materialised_kl)):.1e}")
diff = max(float(jnp.max(jnp.abs(grads[k] - grads_ref[k]))) for k in grads)
print(f"max |fused - materialised| over the student's gradients: {diff:.1e}")

# %% [markdown]
# On the held-out pairs, we compare the cross-entropy $-\log Q(\text{next})$
# of both models on the data with the floor, and the student's remaining
# divergence from the teacher.

# %%
@jax.jit
def held_out(teacher, student, prev, nxt):
  h_teacher = hidden_states(teacher, prev)
  h_student = hidden_states(student, prev)
  return {
      "teacher": jxent.linear_softmax_cross_entropy(
          h_teacher, teacher["head"], nxt),
      "student": jxent.linear_softmax_cross_entropy(
          h_student, student["head"], nxt),
      "kl": jxent.linear_kl_divergence(
          h_teacher, teacher["head"], h_student, student["head"],
          reduction="mean"),
  }


scores = held_out(teacher, student, test_prev, test_next)
print("held-out cross-entropy on the data, nats per token")
print(f"  floor H(next | previous): {floor:.3f}")
print(f"  teacher (hidden 64):      {scores['teacher']:.3f}")
print(f"  student (hidden 8):       {scores['student']:.3f}")
print(f"held-out D_KL(teacher || student): {scores['kl']:.3f} nats")

# %% [markdown]
# ### Other divergences, and a sparse teacher
#
# The forward KL makes the student cover everything the teacher deems
# likely. Other choices are one call away:
#
# * the reverse KL $D_{KL}(Q \,\|\, P)$, which lets the student pick the
#   teacher's main modes, is `linear_kl_divergence` with the heads swapped;
# * `linear_js_divergence(p_x, p_w, q_x, q_w, beta=0.5)` is the
#   Jensen-Shannon divergence, the mean KL divergence of $P$ and of $Q$
#   from their mixture $M = (P + Q) / 2$, symmetric and at most $\log 2$.
#   Other `beta` weight the mixture $M = \beta P + (1 - \beta) Q$; at
#   `beta=0` and `beta=1` the function returns the forward and the reverse
#   KL, the limits of the divergence divided by $\beta$ or $1 - \beta$;
# * a teacher too large to run beside the student is often stored offline
#   as its top $k$ token ids and their log-probabilities.
#   `linear_kl_divergence_from_top_k` takes those. With `tail="bin"` the
#   teacher's missing mass $1 - \sum_{i \le k} P_i$ is one more bin, set
#   against the student's mass outside the top $k$. Merging classes never
#   increases a KL divergence, so this is a lower bound on the full one.
#   With `tail="renormalize"` the top $k$ are rescaled to sum to 1.
#
# Here they are for the trained pair on the held-out contexts, with the
# teacher's top 32 of its 512 tokens (which we can afford to materialise
# at this size).

# %%
TOP_K = 32


@jax.jit
def divergences(teacher, student, prev):
  h_p, w_p = hidden_states(teacher, prev), teacher["head"]
  h_q, w_q = hidden_states(student, prev), student["head"]
  top_log_probs, top_ids = jax.lax.top_k(jax.nn.log_softmax(h_p @ w_p), TOP_K)
  return {
      "forward KL(P || Q)": jxent.linear_kl_divergence(h_p, w_p, h_q, w_q),
      "reverse KL(Q || P)": jxent.linear_kl_divergence(h_q, w_q, h_p, w_p),
      "JS, beta = 0.5": jxent.linear_js_divergence(h_p, w_p, h_q, w_q),
      f"top-{TOP_K} KL, tail='bin'": jxent.linear_kl_divergence_from_top_k(
          top_ids, top_log_probs, h_q, w_q, tail="bin"),
      f"top-{TOP_K} KL, tail='renormalize'":
          jxent.linear_kl_divergence_from_top_k(
              top_ids, top_log_probs, h_q, w_q, tail="renormalize"),
      "teacher mass in its top k": jnp.exp(
          jax.nn.logsumexp(top_log_probs, axis=1)),
  }


per_token = divergences(teacher, student, test_prev)
print("P: teacher, Q: student; mean over held-out tokens")
for name in ("forward KL(P || Q)", "reverse KL(Q || P)", "JS, beta = 0.5",
             "teacher mass in its top k", f"top-{TOP_K} KL, tail='bin'",
             f"top-{TOP_K} KL, tail='renormalize'"):
  values = per_token[name]
  print(f"  {name:34} {values.mean():.4f}")
gap = per_token["forward KL(P || Q)"] - per_token[f"top-{TOP_K} KL, tail='bin'"]
print(f"binned top-k KL <= full KL on {int((gap >= -1e-5).sum())} of"
      f" {gap.size} tokens (min gap {gap.min():.1e})")
print(f"JS <= log 2 = {math.log(2):.4f}:"
      f" {bool((per_token['JS, beta = 0.5'] <= math.log(2)).all())}")

# %% [markdown]
# ## 3. Policy log-probabilities and entropy, for RL
#
# Policy-gradient fine-tuning (PPO, GRPO) samples tokens from the model at
# some temperature $T$ and then needs, for each sampled token $y$, its
# log-probability $\log q_T(y)$ under $q_T = \operatorname{softmax}(z / T)$,
# and often the entropy $H(q_T)$ for an entropy bonus.
# `jxent.linear_log_probs(h, W, tokens, temperature=T,
# return_entropy=True)` returns both per token, again without the logits.
#
# We use the student as the policy, sample one token for each of 512
# held-out contexts at $T = 0.7$, and check both outputs against the
# materialised logits $z / T$: `jax.nn.log_softmax` for the
# log-probabilities and `jxent.entropy_from_logits` for the entropy.

# %%
TEMPERATURE = 0.7
prompts = test_prev[:512]


@functools.partial(jax.jit, static_argnames="materialise")
def policy_terms(params, prev, tokens, materialise=False):
  """log q_T(token) and H(q_T) per context: fused, or from the logits."""
  h = hidden_states(params, prev)
  if not materialise:
    return jxent.linear_log_probs(h, params["head"], tokens,
                                  temperature=TEMPERATURE,
                                  return_entropy=True)
  logits = h @ params["head"] / TEMPERATURE
  log_q = jax.nn.log_softmax(logits)
  picked = jnp.take_along_axis(log_q, tokens[:, None], axis=1)[:, 0]
  return picked, jxent.entropy_from_logits(logits)


@jax.jit
def sample(params, prev, key):
  logits = hidden_states(params, prev) @ params["head"] / TEMPERATURE
  return jax.random.categorical(key, logits)


tokens = sample(student, prompts, jax.random.key(0))
log_q, entropy = policy_terms(student, prompts, tokens)
log_q_ref, entropy_ref = policy_terms(student, prompts, tokens,
                                      materialise=True)
print("log q(sampled token), first five:", np.asarray(log_q[:5]))
print(f"max |log q - reference| = {jnp.max(jnp.abs(log_q - log_q_ref)):.1e}")
print(f"max |H - reference|     = {jnp.max(jnp.abs(entropy - entropy_ref)):.1e}")
print(f"mean entropy at T = {TEMPERATURE}: {entropy.mean():.3f} nats")

# %% [markdown]
# Both outputs are differentiable. A toy task: reward a sampled token with
# 1 if it is among the first 64 token ids, else 0. As in GRPO, the
# advantage is the reward minus the mean reward of the group, and the loss
# is
#
# $$\ell = -\frac{1}{N} \sum_i A_i \log q_T(y_i)
#   - \beta \frac{1}{N} \sum_i H(q_T(\cdot \mid x_i)),$$
#
# with an entropy bonus $\beta = 0.01$ that keeps the policy from
# collapsing. `jax.grad` differentiates through `linear_log_probs`; we
# compare its gradient with the materialised one, then take a few Adam
# steps and watch the reward rise.

# %%
REWARDED, ENTROPY_BONUS = 64, 0.01


def policy_loss(params, prev, tokens, advantage, materialise=False):
  log_q, entropy = policy_terms(params, prev, tokens, materialise)
  loss = -jnp.mean(advantage * log_q) - ENTROPY_BONUS * jnp.mean(entropy)
  return loss, entropy.mean()


reward = (tokens < REWARDED).astype(jnp.float32)
advantage = reward - reward.mean()
policy_grad = jax.jit(jax.grad(policy_loss, has_aux=True),
                      static_argnames="materialise")
grads, _ = policy_grad(student, prompts, tokens, advantage)
grads_ref, _ = policy_grad(student, prompts, tokens, advantage,
                           materialise=True)
for name in grads:
  diff = jnp.max(jnp.abs(grads[name] - grads_ref[name]))
  scale = jnp.max(jnp.abs(grads_ref[name]))
  print(f"d loss / d {name:10}: max |fused - reference| = {diff:.1e}"
        f" (largest entry {scale:.1e})")

# %%
optimizer = optax.adam(3e-2)


@jax.jit
def policy_step(params, opt_state, key):
  tokens = sample(params, prompts, key)
  reward = (tokens < REWARDED).astype(jnp.float32)
  grads, entropy = jax.grad(policy_loss, has_aux=True)(
      params, prompts, tokens, reward - reward.mean())
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, reward.mean(), entropy


policy, opt_state = student, optimizer.init(student)
history = []
for key in jax.random.split(jax.random.key(1), 30):
  policy, opt_state, mean_reward, mean_entropy = policy_step(policy, opt_state,
                                                             key)
  history.append((float(mean_reward), float(mean_entropy)))
history = np.asarray(history)
print(f"step  1: mean reward {history[0, 0]:.3f}, mean entropy"
      f" {history[0, 1]:.3f} nats")
print(f"step {len(history)}: mean reward {history[-1, 0]:.3f}, mean entropy"
      f" {history[-1, 1]:.3f} nats")

# %% [markdown]
# ## 4. Compiled memory against vocabulary size
#
# How much memory does avoiding the logits save? We ask the compiler. For
# 512 tokens, a hidden size of 256, float32, and vocabularies from 4096 to
# 262,144 tokens, we compile one training step, the loss and its gradients
# with respect to $x$ and $W$, in two ways:
#
# * fused: `jxent.linear_softmax_cross_entropy(x, w, labels)`;
# * materialised: `jxent.softmax_cross_entropy_with_integer_labels(x @ w,
#   labels, reduction="mean")`.
#
# `jax.ShapeDtypeStruct` stands in for the arrays, so nothing is allocated
# or run: we only lower and compile, then read
# `memory_analysis().temp_size_in_bytes`, the scratch memory of the step.
# It leaves out the arguments and the outputs ($x$, $W$ and their
# gradients), which both ways need alike.

# %%
N_TOKENS, D_HIDDEN = 512, 256
vocab_sizes = [2**k for k in range(12, 19, 2)]


def fused(x, w, labels):
  return jxent.linear_softmax_cross_entropy(x, w, labels)


def materialised(x, w, labels):
  return jxent.softmax_cross_entropy_with_integer_labels(
      x @ w, labels, reduction="mean")


def temp_bytes(loss, vocab):
  """Scratch bytes of the compiled loss-and-gradient step; runs nothing."""
  x = jax.ShapeDtypeStruct((N_TOKENS, D_HIDDEN), jnp.float32)
  w = jax.ShapeDtypeStruct((D_HIDDEN, vocab), jnp.float32)
  labels = jax.ShapeDtypeStruct((N_TOKENS,), jnp.int32)
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  return step.lower(x, w, labels).compile().memory_analysis().temp_size_in_bytes


def cpu_name():
  """The processor's model name, as the operating system reports it."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


memory = {name: np.array([temp_bytes(loss, v) for v in vocab_sizes])
          for name, loss in (("fused", fused), ("materialised", materialised))}
one_copy = np.array([N_TOKENS * v * 4 for v in vocab_sizes])
mib = 2**20
print(f"compiled by jax {jax.__version__} for the {jax.default_backend()}"
      f" backend, on this machine: {cpu_name()}, {os.cpu_count()} cores")
print(f"{'vocabulary':>10} {'one logits copy':>16} {'materialised':>13}"
      f" {'fused':>8}   (MiB)")
for k, vocab in enumerate(vocab_sizes):
  print(f"{vocab:>10} {one_copy[k] / mib:>16.1f}"
        f" {memory['materialised'][k] / mib:>13.1f}"
        f" {memory['fused'][k] / mib:>8.1f}")
copies = memory["materialised"] / one_copy
print(f"materialised scratch / one logits copy: {copies.min():.2f} to"
      f" {copies.max():.2f}")
print(f"fused scratch: {memory['fused'].min() / mib:.1f} to"
      f" {memory['fused'].max() / mib:.1f} MiB whatever the vocabulary")
print(f"at V = {vocab_sizes[-1]}: the fused step needs"
      f" {memory['materialised'][-1] / memory['fused'][-1]:.0f} times less"
      f" scratch memory")

# %%
fig, ax = plt.subplots()
ax.loglog(vocab_sizes, memory["materialised"] / mib, "o-",
          label="materialised: the loss of x @ w")
ax.loglog(vocab_sizes, memory["fused"] / mib, "s-",
          label="fused: linear_softmax_cross_entropy")
ax.loglog(vocab_sizes, one_copy / mib, "k:",
          label="one float32 copy of the logits")
ax.set_xticks(vocab_sizes, [f"{v // 1024}k" for v in vocab_sizes])
ax.minorticks_off()
ax.set_xlabel("vocabulary size V")
ax.set_ylabel("compiled scratch memory (MiB)")
ax.set_title(f"Loss and gradients, {N_TOKENS} tokens, hidden {D_HIDDEN},"
             f" float32 ({jax.default_backend().upper()})")
ax.legend(fontsize="small", loc="upper left")
plt.show()

# %% [markdown]
# The materialised step's scratch memory grows in proportion to the
# vocabulary: a fixed number of copies of the logits (the ratio printed
# above). The fused step's stays flat. It holds a few [tokens, block]
# buffers, one block of columns of the logits and of their gradient at a
# time, and by default the block size depends on the number of tokens (a
# power of two that makes one float32 buffer about 4 MiB), not on the
# vocabulary. Its cost is time, not memory: the backward pass recomputes
# each block's logits, one more matmul of the size of $x W$.
#
# These numbers were compiled on the CPU named above, by XLA's CPU
# backend; a GPU backend schedules differently, but there too the logits,
# and so the materialised step's memory, grow with the vocabulary.
