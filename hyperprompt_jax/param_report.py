"""Parameter counts per config via `jax.eval_shape` (no allocation: works for XXL on a laptop).

    python -m hyperprompt_jax.param_report --size base --size xxl
"""

import argparse
import dataclasses
from typing import Dict

import jax
import numpy as np

from hyperprompt_jax import trainer
from hyperprompt_jax.config import VARIANTS, HyperPromptConfig
from hyperprompt_jax.network import Transformer

# T5.1.1 sizes (the public t5x checkpoints): emb, heads, layers (each stack), head_dim, mlp.
T511_SIZES = {
    'small': dict(emb_dim=512, num_heads=6, num_encoder_layers=8, num_decoder_layers=8,
                  head_dim=64, mlp_dim=1024),
    'base': dict(emb_dim=768, num_heads=12, num_encoder_layers=12, num_decoder_layers=12,
                 head_dim=64, mlp_dim=2048),
    'large': dict(emb_dim=1024, num_heads=16, num_encoder_layers=24, num_decoder_layers=24,
                  head_dim=64, mlp_dim=2816),
    'xl': dict(emb_dim=2048, num_heads=32, num_encoder_layers=24, num_decoder_layers=24,
               head_dim=64, mlp_dim=5120),
    'xxl': dict(emb_dim=4096, num_heads=64, num_encoder_layers=24, num_decoder_layers=24,
                head_dim=64, mlp_dim=10240),
}


def t511_config(size: str, **overrides) -> HyperPromptConfig:
  fields = dict(vocab_size=32128, mlp_activations=('gelu', 'linear'), **T511_SIZES[size])
  fields.update(overrides)
  return HyperPromptConfig(**fields)


def param_shapes(config: HyperPromptConfig):
  """The 'params' tree of ShapeDtypeStructs, without allocating anything."""
  return trainer.init_variables_abstract(Transformer(config))['params']


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
  parser.add_argument('--size', action='append', choices=sorted(T511_SIZES))
  parser.add_argument('--num_tasks', type=int, default=8)
  args = parser.parse_args(argv)
  print('| size | variant | total params | task params | task % |')
  print('|---|---|---:|---:|---:|')
  for size in args.size or ['base', 'xxl']:
    for variant in VARIANTS:
      r = report(t511_config(size, variant=variant, num_tasks=args.num_tasks))
      print(f"| {size} | {variant} | {r['total']:,} | {r['task']:,} | {r['task_percent']:.3f} |")


if __name__ == '__main__':
  main()
