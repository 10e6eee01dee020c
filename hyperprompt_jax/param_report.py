"""Parameter counts per config via `jax.eval_shape` (no allocation: works for XXL on a laptop);
sizes come from the gin model files.

    python -m hyperprompt_jax.param_report --size base --size xxl
"""

import argparse
import dataclasses
from typing import Dict

import jax
import numpy as np

from hyperprompt_jax import gin_utils, models
from hyperprompt_jax.config import VARIANTS, HyperPromptConfig
from hyperprompt_jax.network import Transformer

SIZES = ('small', 'base', 'large', 'xl', 'xxl')  # gin/models/<size>.gin


def size_config(size: str, **overrides) -> HyperPromptConfig:
  """T5.1.1 `size` as gin/models/<size>.gin defines it (the one source of sizes)."""
  if size not in SIZES:
    raise ValueError(f'Unknown size {size!r}: choose one of {", ".join(SIZES)}.')
  return dataclasses.replace(gin_utils.model_config([f'models/{size}.gin']), **overrides)


def param_shapes(config: HyperPromptConfig):
  """The 'params' tree of ShapeDtypeStructs, without allocating anything."""
  return models.init_variables_abstract(Transformer(config))['params']


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def report(config: HyperPromptConfig) -> Dict[str, float]:
  """total, t5 (the backbone: exactly the 'mtl' tree), task (the rest) and task_percent."""
  total = count(param_shapes(config))
  backbone = count(param_shapes(dataclasses.replace(config, variant='mtl')))
  return {'total': total, 't5': backbone, 'task': total - backbone,
          'task_percent': 100.0 * (total - backbone) / total}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', action='append', choices=SIZES)
  parser.add_argument('--num_tasks', type=int, default=8)
  args = parser.parse_args(argv)
  print('| size | variant | total params | task params | task % |')
  print('|---|---|---:|---:|---:|')
  for size in args.size or ['base', 'xxl']:
    for variant in VARIANTS:
      r = report(size_config(size, variant=variant, num_tasks=args.num_tasks))
      print(f"| {size} | {variant} | {r['total']:,} | {r['task']:,} | {r['task_percent']:.3f} |")


if __name__ == '__main__':
  main()
