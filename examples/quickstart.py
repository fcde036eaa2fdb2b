"""A few jxent losses, printed: the README's quickstart as a script."""

import jax
import jax.numpy as jnp

import jxent


def main() -> None:
  coin = jnp.array([0.5, 0.5])
  print(f"fair coin, heads: {jxent.information(coin[0], base=2):.3f} bits")
  print(f"entropy of a fair die: {jxent.entropy(jnp.full(6, 1 / 6), base=2):.3f} bits")
  label = jnp.array([1.0, 0.0, 0.0, 0.0])
  prediction = jnp.array([0.7, 0.1, 0.05, 0.15])
  print(f"H(P, Q) = {jxent.cross_entropy(label, prediction):.4f} nats")
  p, q = jnp.array([0.9, 0.1]), jnp.array([0.5, 0.5])
  print(f"KL(P||Q) = {jxent.kl_divergence(p, q):.4f}, "
        f"KL(Q||P) = {jxent.kl_divergence(q, p):.4f} nats")
  logits = jnp.array([[2.0, 1.0, -jnp.inf], [1e8, 1e8, 1e8]])
  loss = jax.jit(jxent.softmax_cross_entropy_with_integer_labels)(
      logits, jnp.array([0, 2]))
  print("softmax cross-entropy (masked logit, huge logits):", loss)


if __name__ == "__main__":
  main()
