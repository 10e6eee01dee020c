"""Tiny configs and batches shared by the tests."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import Transformer

CONDITIONED = ('prompt_tuning', 'share', 'sep', 'global', 'adapter', 'hyperformer')
ALL_VARIANTS = ('mtl',) + CONDITIONED


def tiny_config(variant='global', **overrides):
  fields = dict(vocab_size=61, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                num_encoder_layers=2, num_decoder_layers=2, mlp_activations=('gelu', 'linear'),
                dropout_rate=0.0, variant=variant, num_tasks=3, prompt_length=4,
                hyper_bottleneck=6, task_embedding_dim=5, layer_task_embedding_dim=7,
                adapter_dim=6, hyperformer_hidden_dim=9, input_prompt_length=5)
  fields.update(overrides)
  return HyperPromptConfig(**fields)


def random_tokens(seed, shape, vocab=61, pad_from=None):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(2, vocab, shape).astype(np.int32)
  if pad_from is not None:
    for row, start in enumerate(pad_from):
      tokens[row, start:] = 0
  return tokens


def init_params(config, seed=0, perturb=True):
  """Parameters, perturbed so that no zero initialisation (adapters' up-projections) hides
  the conditioning."""
  model = Transformer(config)
  x = jnp.ones((1, 4), jnp.int32)
  params = model.init(jax.random.PRNGKey(seed), x, x, x, enable_dropout=False)['params']
  if perturb:
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
    leaves = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    params = jax.tree.unflatten(tree, leaves)
  return params


def shift_right(targets):
  """Decoder inputs for unpacked targets: 0 then targets[:-1]."""
  return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def dots_in_and_out_of_loops(hlo_text: str, op_name_part: str):
  """(inside, outside): how many dot instructions whose source op_name contains
  `op_name_part` a compiled HLO module runs inside any while loop's body, and outside every
  loop. XLA keeps an instruction's op_name when it hoists it out of a loop, so the op_name
  tells where it came from and the enclosing computation where it runs."""
  comps, current = {}, None
  for line in hlo_text.split('\n'):
    if line and not line[0].isspace() and line.rstrip().endswith('{'):
      current = line.split()[1] if line.startswith('ENTRY') else line.split()[0]
      comps[current] = []
    elif current is not None:
      comps[current].append(line)
  callee = re.compile(r'(?:calls=|body=|condition=|to_apply=|computations=\{)([%\w.\-]+)')

  def reachable(name, seen):
    for line in comps.get(name, []):
      for m in callee.finditer(line):
        if m.group(1) not in seen:
          seen.add(m.group(1))
          reachable(m.group(1), seen)
    return seen
  in_loop = set()
  for m in re.finditer(r'body=([%\w.\-]+)', hlo_text):
    in_loop |= reachable(m.group(1), {m.group(1)})
  count = lambda names: sum(1 for n in names for line in comps[n]
                            if ' dot(' in line and op_name_part in line)
  return count(in_loop), count(set(comps) - in_loop)
