"""The paper's attention analyses: per encoder layer, the attention mass that queries put on
the hyper-prompts, and the entropy of the attention distributions (He et al. 2022, Sec. 5).

    python -m hyperprompt_jax.analysis --gin_file=runs/analysis_demo.gin --gin.MODEL_DIR=/tmp/demo

averages over the first `num_examples` validation examples of each task, all heads and every
real (non-padding) query. Run it on an 'mtl' run as well to compare entropies with and
without hyper-prompts (its prompt mass is 0 by construction).
"""

import json
from typing import Dict, Optional, Sequence

import gin
import numpy as np

import hyperprompt_tasks
from hyperprompt_jax import checkpoints, evaluation, gin_utils, input_pipeline
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import Transformer


def encoder_attention_stats(model: Transformer, params, tokens: np.ndarray,
                            task_ids: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
  """Per encoder layer: summed prompt mass and entropy over real queries and heads, and the
  number of (query, head) pairs: {'prompt_mass': [layers], 'entropy': [layers], 'count': n}."""
  ids = task_ids if model.config.is_conditioned else None
  _, state = model.apply({'params': params}, tokens, enable_dropout=False, task_ids=ids,
                         method=Transformer.encode, mutable=['intermediates'])
  layers = state['intermediates']['encoder']
  real = np.asarray(tokens > 0, np.float32)  # [batch, len]
  if model.config.variant == 'prompt_tuning':  # input prompts are real positions too
    real = np.concatenate([np.ones((len(tokens), model.config.prompt_length), np.float32),
                           real], axis=1)
  heads = model.config.num_heads
  out = {'prompt_mass': [], 'entropy': []}
  for i in range(model.config.num_encoder_layers):
    attn = layers[f'layers_{i}']['attention']
    for name in out:
      value = np.asarray(attn[name][0])  # [batch, heads, q_len]
      out[name].append(float((value * real[:, None, :]).sum()))
  return {'prompt_mass': np.asarray(out['prompt_mass']), 'entropy': np.asarray(out['entropy']),
          'count': float(real.sum() * heads)}


@gin.configurable
def attention_analysis(*, model_dir: str = gin.REQUIRED,
                       mixture_or_task_name: str = gin.REQUIRED,
                       task_feature_lengths: Dict[str, int] = gin.REQUIRED,
                       config: HyperPromptConfig = gin.REQUIRED, step: Optional[int] = None,
                       num_examples: int = 100, batch_size: int = 50,
                       split: str = 'validation') -> Dict[str, Sequence[float]]:
  """Mean prompt attention mass and entropy per encoder layer over the mixture's tasks."""
  model = Transformer(config)
  params, step = checkpoints.restore_params(model, model_dir, step)
  total = {'prompt_mass': 0.0, 'entropy': 0.0, 'count': 0.0}
  for task in hyperprompt_tasks.tasks_of(mixture_or_task_name):
    if split not in task.splits:
      continue
    examples = input_pipeline.eval_examples(task, task_feature_lengths, split, num_examples)
    for start in range(0, len(examples), batch_size):
      chunk = examples[start:start + batch_size]
      tokens = evaluation.pad_tokens([ex['inputs'] for ex in chunk],
                                     task_feature_lengths['inputs'])
      ids = np.asarray([int(ex['task_ids'][0]) for ex in chunk], np.int32)
      stats = encoder_attention_stats(model, params, tokens, ids)
      for key in total:
        total[key] = total[key] + stats[key]
  count = max(total['count'], 1.0)
  report = {'step': step, 'variant': config.variant,
            'prompt_mass_per_layer': [float(x) for x in np.atleast_1d(total['prompt_mass'] / count)],
            'entropy_per_layer': [float(x) for x in np.atleast_1d(total['entropy'] / count)]}
  print(json.dumps(report))
  return report


def main(argv=None):
  gin_utils.run_command('hyperprompt_jax.analysis', 'attention_analysis',
                        'HyperPrompt attention analysis.', argv)


if __name__ == '__main__':
  main()
