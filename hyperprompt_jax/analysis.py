"""The paper's attention analyses: per encoder and decoder layer, the self-attention mass that
queries put on the hyper-prompts, and the entropy of the self-attention distributions (He et
al. 2022, Sec. 5); the decoder's teacher-forced on the targets.

    python -m hyperprompt_jax.analysis --gin_file=runs/analysis_demo.gin --gin.MODEL_DIR=/tmp/demo

averages over the first `num_examples` validation examples of each task, all heads and every
real (non-padding) query (JSON keys prompt_mass_per_layer / entropy_per_layer for the
encoder, decoder_prompt_mass_per_layer / decoder_entropy_per_layer for the decoder). Run it on an 'mtl' run as well to compare entropies with and
without hyper-prompts (its prompt mass is 0 by construction). With matplotlib (the `plots`
extra) it writes MODEL_DIR/analysis/attention_<step>.{json,png} and, for 'global', a plot of
the learned task embeddings (task_embeddings_<step>.png).
"""

import io
import json
import logging
import os
from typing import Dict, Optional, Sequence

import gin
import jax
import numpy as np
from tensorflow.io import gfile

import hyperprompt_tasks
from hyperprompt_jax import evaluation, files, gin_utils, input_pipeline, runtime
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import ENCODER_HYPERPROMPT, SHARED_HYPERPROMPT, Transformer

log = logging.getLogger('hyperprompt_jax')


_JITTED = {}


def _apply(model, partitioner, variables, *args, method=None, enable_dropout=False,
           mutable=(), task_ids=None):
  """model.apply; with a partitioner, under jit on its mesh (parameters as sharded, the
  outputs replicated so that every process reads them), compiled once per call kind."""
  if partitioner is None:
    return model.apply(variables, *args, method=method, enable_dropout=enable_dropout,
                       mutable=list(mutable), task_ids=task_ids)
  key = (id(model), id(partitioner), method, enable_dropout, tuple(mutable))
  if key not in _JITTED:  # the entry keeps model and partitioner alive: ids stay theirs
    _JITTED[key] = (model, partitioner, jax.jit(
        lambda v, a, t: model.apply(v, *a, method=method, enable_dropout=enable_dropout,
                                    mutable=list(mutable), task_ids=t),
        out_shardings=partitioner.replicated))
  with partitioner.context():
    return _JITTED[key][2](variables, args, task_ids)


def _sown(stack, layer: int, block: str, name: str) -> np.ndarray:
  """A value the attention of `layer` sowed ([batch, heads, q_len]); scanned layers sow one
  stacked [layers, ...] value."""
  if 'layers' in stack:
    return np.asarray(stack['layers'][block][name][0][layer])
  return np.asarray(stack[f'layers_{layer}'][block][name][0])


def encoder_attention_stats(model: Transformer, params, tokens: np.ndarray,
                            task_ids: Optional[np.ndarray], partitioner=None
                            ) -> Dict[str, np.ndarray]:
  """Per encoder layer: summed prompt mass and entropy over real queries and heads, and the
  number of (query, head) pairs: {'prompt_mass': [layers], 'entropy': [layers], 'count': n}.
  `partitioner`: the parameters are sharded on its mesh."""
  ids = task_ids if model.config.is_conditioned else None
  _, state = _apply(model, partitioner, {'params': params}, tokens, task_ids=ids,
                    method=Transformer.encode, mutable=('intermediates',))
  layers = state['intermediates']['encoder']
  real = np.asarray(tokens > 0, np.float32)  # [batch, len]
  if model.config.variant == 'prompt_tuning':  # input prompts are real positions too
    real = np.concatenate([np.ones((len(tokens), model.config.input_prompt_length), np.float32),
                           real], axis=1)
  heads = model.config.num_heads
  out = {'prompt_mass': [], 'entropy': []}
  for i in range(model.config.num_encoder_layers):
    for name in out:
      value = _sown(layers, i, 'attention', name)  # [batch, heads, q_len]
      out[name].append(float((value * real[:, None, :]).sum()))
  return {'prompt_mass': np.asarray(out['prompt_mass']), 'entropy': np.asarray(out['entropy']),
          'count': float(real.sum() * heads)}


def decoder_attention_stats(model: Transformer, params, tokens: np.ndarray, targets: np.ndarray,
                            task_ids: Optional[np.ndarray], partitioner=None
                            ) -> Dict[str, np.ndarray]:
  """encoder_attention_stats for the decoder's self-attention, teacher-forced on `targets`
  [batch, target_len]: sums over real target positions and heads, per decoder layer."""
  ids = task_ids if model.config.is_conditioned else None
  decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  _, state = _apply(model, partitioner, {'params': params}, tokens, decoder_inputs, targets,
                    task_ids=ids, mutable=('intermediates',))
  layers = state['intermediates']['decoder']
  real = np.asarray(targets > 0, np.float32)  # [batch, target_len]
  out = {'prompt_mass': [], 'entropy': []}
  for i in range(model.config.num_decoder_layers):
    for name in out:
      out[name].append(float((_sown(layers, i, 'self_attention', name) * real[:, None, :]).sum()))
  return {'prompt_mass': np.asarray(out['prompt_mass']), 'entropy': np.asarray(out['entropy']),
          'count': float(real.sum() * model.config.num_heads)}


@gin.configurable
def attention_analysis(*, model_dir: str = gin.REQUIRED,
                       mixture_or_task_name: str = gin.REQUIRED,
                       task_feature_lengths: Dict[str, int] = gin.REQUIRED,
                       config: HyperPromptConfig = gin.REQUIRED, step: Optional[int] = None,
                       num_examples: int = 100, batch_size: int = 50,
                       split: str = 'validation', num_partitions: int = 1,
                       parameter_partitioning_dims: int = 1,
                       activation_partitioning_dims: int = 1) -> Dict[str, Sequence[float]]:
  """Mean prompt attention mass and entropy per encoder and decoder layer over the mixture's
  tasks. The model is laid out as in training (runtime.build): parameters restored into
  their shardings, statistics computed under jit and replicated to every process."""
  run = runtime.build(config, num_partitions, parameter_partitioning_dims,
                      activation_partitioning_dims)
  model = run.model
  params, step = run.restore_params(model_dir, step)
  part = run.partitioner
  stacks = {'encoder': encoder_attention_stats, 'decoder': decoder_attention_stats}
  total = {stack: {'prompt_mass': 0.0, 'entropy': 0.0, 'count': 0.0} for stack in stacks}
  for task in hyperprompt_tasks.tasks_of(mixture_or_task_name):
    if split not in task.splits:
      continue
    examples = input_pipeline.eval_examples(task, task_feature_lengths, split, num_examples)
    for start in range(0, len(examples), batch_size):
      chunk = examples[start:start + batch_size]
      tokens = evaluation.pad_tokens([ex['inputs'] for ex in chunk],
                                     task_feature_lengths['inputs'])
      targets = evaluation.pad_tokens([ex['targets'] for ex in chunk],
                                      task_feature_lengths['targets'])
      ids = np.asarray([int(ex['task_ids'][0]) for ex in chunk], np.int32)
      for stack, stats in (('encoder', encoder_attention_stats(model, params, tokens, ids, part)),
                           ('decoder', decoder_attention_stats(model, params, tokens, targets,
                                                               ids, part))):
        for key in total[stack]:
          total[stack][key] = total[stack][key] + stats[key]
  report = {'step': step, 'variant': config.variant}
  for stack, prefix in (('encoder', ''), ('decoder', 'decoder_')):
    count = max(total[stack]['count'], 1.0)
    for key in ('prompt_mass', 'entropy'):
      report[f'{prefix}{key}_per_layer'] = [
          float(x) for x in np.atleast_1d(total[stack][key] / count)]
  print(json.dumps(report))
  if jax.process_index() == 0:
    names = {hyperprompt_tasks.TASK_IDS[t.name]: hyperprompt_tasks.task_key(t.name)
             for t in hyperprompt_tasks.tasks_of(mixture_or_task_name)
             if t.name in hyperprompt_tasks.TASK_IDS}
    figures(report, params, os.path.join(model_dir, 'analysis'), names)
  return report


def figures(report: Dict, params, out_dir: str,
            task_names: Optional[Dict[int, str]] = None) -> Sequence[str]:
  """PNGs beside the JSON (matplotlib, the `plots` extra): prompt mass and entropy per encoder
  and decoder layer, and for 'global' the learned task embeddings projected on their two principal
  axes. Returns the files written (none without matplotlib)."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    log.info('No figures: pip install -e ".[plots]" for PNGs of the analysis.')
    return []
  gfile.makedirs(out_dir)
  files.write_text_atomic(os.path.join(out_dir, f'attention_{report["step"]}.json'),
                          json.dumps(report, indent=1))
  written = []
  stacks = [(stack, prefix) for stack, prefix in (('encoder', ''), ('decoder', 'decoder_'))
            if f'{prefix}entropy_per_layer' in report]
  fig, axes = plt.subplots(len(stacks), 2, figsize=(8, 3 * len(stacks)), squeeze=False)
  for (stack, prefix), (mass, entropy) in zip(stacks, axes):
    layers = np.arange(len(report[f'{prefix}entropy_per_layer']))
    mass.bar(layers, report[f'{prefix}prompt_mass_per_layer'])
    mass.set(xlabel=f'{stack} layer', ylabel='attention mass on hyper-prompts', xticks=layers)
    entropy.plot(layers, report[f'{prefix}entropy_per_layer'], marker='o')
    entropy.set(xlabel=f'{stack} layer', ylabel='self-attention entropy (nats)', xticks=layers)
  fig.suptitle(f'{report["variant"]}, step {report["step"]}')
  fig.tight_layout()
  written.append(_save(fig, os.path.join(out_dir, f'attention_{report["step"]}.png')))
  table = _task_embeddings(params)
  if table is not None and len(table) >= 2:
    centred = table - table.mean(0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ axes[:2].T  # [tasks, 2]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(xy[:, 0], xy[:, 1])
    ax.margins(0.25)
    for tid, (x, y) in enumerate(xy):
      ax.annotate((task_names or {}).get(tid, str(tid)), (x, y))
    ax.set(xticks=[], yticks=[], xlabel='principal axis 1', ylabel='principal axis 2')
    ax.set_title(f'task embeddings, step {report["step"]}', fontsize=10)
    fig.tight_layout()
    written.append(_save(fig, os.path.join(out_dir, f'task_embeddings_{report["step"]}.png')))
  plt.close('all')
  return written


def _task_embeddings(params) -> Optional[np.ndarray]:
  for name in (SHARED_HYPERPROMPT, ENCODER_HYPERPROMPT):
    table = params.get(name, {}).get('task_embedding')
    if table is not None:
      return np.asarray(table, np.float64)
  return None


def _save(fig, path: str) -> str:
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=120)
  with gfile.GFile(path, 'wb') as f:
    f.write(buffer.getvalue())
  return path


def main(argv=None):
  gin_utils.run_command('hyperprompt_jax.analysis', 'attention_analysis',
                        'HyperPrompt attention analysis.', argv)


if __name__ == '__main__':
  main()
