"""`python -m kd_jax.models --list [--image_size=112 --num_classes=4]`:
params, MB, GFLOPs and CPU latency of every registered model.
`python -m kd_jax.models --features --models=vgg16,mobilenet_v3_small`:
the named feature maps (hint/guided layers) and their shapes."""
import argparse
import sys

from kd_jax import models
from kd_jax.models import profile


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m kd_jax.models",
                              description=__doc__.split("\n")[0])
  p.add_argument("--list", action="store_true", help="print the model table")
  p.add_argument("--models", default="", help="comma-separated names (default: all)")
  p.add_argument("--image_size", type=int, default=112)
  p.add_argument("--num_classes", type=int, default=4)
  p.add_argument("--features", action="store_true",
                 help="print each model's feature names and shapes")
  p.add_argument("--no_timing", action="store_true", help="skip latency/throughput")
  p.add_argument("--runs", type=int, default=20, help="batch-1 timing runs")
  args = p.parse_args(argv)
  names = [n for n in args.models.split(",") if n] or sorted(models.MODELS)
  unknown = [n for n in names if n not in models.MODELS]
  if unknown:
    print(f"kd_jax.models: error: unknown model {unknown[0]!r}; allowed: "
          f"{', '.join(sorted(models.MODELS))}", file=sys.stderr)
    return 2
  if args.features:
    for n in names:
      shapes = models.feature_shapes(n, args.num_classes, args.image_size)
      print(f"{n} @ {args.image_size}px: " + ", ".join(
          f"{k} {'x'.join(map(str, v[1:]))}" for k, v in shapes.items()))
    return 0
  if not args.list:
    print("\n".join(names))
    return 0
  rows = []
  for n in names:
    rows.append(profile.profile(n, num_classes=args.num_classes,
                                image_size=args.image_size,
                                latency_runs=args.runs, timing=not args.no_timing))
    print(f"profiled {n}", file=sys.stderr, flush=True)
  print(f"{args.num_classes} classes, {args.image_size}x{args.image_size}x3, "
        f"device: {rows[0]['device']}")
  print(profile.format_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
