"""Tiny configs and batches shared by the tests."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hyperprompt_jax import scan_layout

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


def scanned(config, params=None):
  """The scan_layers=True twin of `config`, and `params` stacked into its layout."""
  config = dataclasses.replace(config, scan_layers=True)
  if params is None:
    return config
  flat = scan_layout.stack_flat(traverse_util.flatten_dict(params), jnp.stack)
  return config, traverse_util.unflatten_dict(flat)


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


def _hlo_computations(hlo_text: str):
  comps, current = {}, None
  for line in hlo_text.split('\n'):
    if line and not line[0].isspace() and line.rstrip().endswith('{'):
      current = line.split()[1] if line.startswith('ENTRY') else line.split()[0]
      comps[current] = []
    elif current is not None:
      comps[current].append(line)
  return comps


_CALLEE = re.compile(r'(?:calls=|body=|condition=|to_apply=|true_computation=|'
                     r'false_computation=)([%\w.\-]+)|computations=\{([^}]*)\}')


def _callees(line):
  for m in _CALLEE.finditer(line):
    if m.group(1):
      yield m.group(1)
    else:
      yield from (n.strip() for n in m.group(2).split(',') if n.strip())


def _reachable(comps, roots):
  seen, todo = set(roots), list(roots)
  while todo:
    for line in comps.get(todo.pop(), []):
      for name in _callees(line):
        if name not in seen:
          seen.add(name)
          todo.append(name)
  return seen


def dots_by_place(hlo_text: str, op_name_part: str):
  """(outside, in_loop, in_loop_branch): how many dot instructions whose source op_name
  contains `op_name_part` a compiled HLO module runs outside every while loop, inside a
  loop's body on every iteration, and inside a loop only within a conditional's branch.
  XLA keeps an instruction's op_name when it hoists it out of a loop, so the op_name tells
  where it came from and the enclosing computation where it runs."""
  comps = _hlo_computations(hlo_text)
  in_loop = _reachable(comps, re.findall(r'body=([%\w.\-]+)', hlo_text))
  branch_roots = [name for comp in in_loop for line in comps.get(comp, [])
                  if ' conditional(' in line for name in _callees(line)]
  in_branch = _reachable(comps, branch_roots) & in_loop if branch_roots else set()
  count = lambda names: sum(1 for n in names for line in comps[n]
                            if ' dot(' in line and op_name_part in line)
  return count(set(comps) - in_loop), count(in_loop - in_branch), count(in_branch)

