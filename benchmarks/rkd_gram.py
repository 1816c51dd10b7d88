"""RKD's loss and gradient: the authors' materialised form against kd_jax's
Gram form, on the embeddings of a study's student.

  python benchmarks/rkd_gram.py [--batch=128] [--dims=9800,640] [--repeats=5]

The released code of RKD (Park et al. 2019; RepDistiller's `RKDLoss`, the
CRD benchmark's) builds every normalised difference e_ij (B^2 D floats) and
contracts them (B^3 D multiply-adds); its distance term is already
Gram-form (`pdist`). kd_jax's
`feature_losses.rkd_loss` takes both terms from the centred Gram matrix
(B^2 D + B^3). The materialised form is written out here, from the paper,
as the reference: the script prints both losses (they must agree) and the
best-of-`repeats` time of one jitted value-and-gradient call on the CPU.
D = 9800 is `tiny_cnn`'s flattened `pre_logits` (14 x 14 x 50), the
student of configs/repro/fashion_transfer_methods.py; D = 640 a wide
CIFAR embedding.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kd_jax.distill import feature_losses as fl  # noqa: E402
from kd_jax.study.deployment import cpu_name  # noqa: E402


def materialised_angles(x_BxD):
  diff_BxBxD = x_BxD[None, :] - x_BxD[:, None]
  e = diff_BxBxD / jnp.maximum(
      jnp.linalg.norm(diff_BxBxD, axis=-1, keepdims=True), 1e-12)
  return jnp.einsum("ijd,ikd->ijk", e, e)


def materialised_rkd(s_BxD, t_BxD):
  angle = jnp.mean(fl.smooth_l1(materialised_angles(s_BxD),
                                materialised_angles(t_BxD)))
  return 25.0 * fl.rkd_distance_loss(s_BxD, t_BxD) + 50.0 * angle


def best_time(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--dims", default="9800,640")
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args()
  print(f"{cpu_name()}; jax {jax.__version__}; "
        f"batch {args.batch}; load average {os.getloadavg()[0]:.1f}")
  print("| D | materialised loss | Gram loss | materialised s | Gram s | speed-up |")
  print("|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for d in (int(x) for x in args.dims.split(",")):
    # Non-negative, off-centre features, as a ReLU map's.
    s = jnp.asarray(np.maximum(rng.normal(1.0, 1.0, (args.batch, d)), 0),
                    jnp.float32)
    t = jnp.asarray(np.maximum(rng.normal(0.5, 1.0, (args.batch, 64)), 0),
                    jnp.float32)
    ref = jax.jit(jax.value_and_grad(materialised_rkd))
    new = jax.jit(jax.value_and_grad(fl.rkd_loss))
    a, b = float(ref(s, t)[0]), float(new(s, t)[0])
    ta, tb = best_time(ref, (s, t), args.repeats), best_time(new, (s, t),
                                                             args.repeats)
    print(f"| {d} | {a:.6f} | {b:.6f} | {ta:.3f} | {tb:.4f} | {ta / tb:.0f}x |")


if __name__ == "__main__":
  main()
