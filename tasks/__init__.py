"""hyperprompt_tasks: seqio tasks and mixtures for HyperPrompt (GLUE, SuperGLUE, offline demo).

Importing this package registers every task and mixture (see README for the names). Each
task emits `task_ids` from the task table (`task_table.py`); `TaskIdEncDecFeatureConverter`
carries them to the model.
"""

import seqio

from hyperprompt_tasks import demo, glue_super_glue, metrics, task_table
from hyperprompt_tasks.feature_converter import TaskIdEncDecFeatureConverter
from hyperprompt_tasks.glue_super_glue import register_mixture
from hyperprompt_tasks.registration import register_task
from hyperprompt_tasks.task_table import (TASK_IDS, benchmark_of, next_free_id, num_tasks,
                                          register_task_id, short_name, task_id, task_key)
from hyperprompt_tasks.vocab import demo_vocabulary, task_vocabulary

__all__ = ['TASK_IDS', 'TaskIdEncDecFeatureConverter', 'benchmark_mixture', 'benchmark_of', 'demo',
           'demo_vocabulary', 'get_mixture_or_task', 'glue_super_glue', 'metrics',
           'next_free_id', 'num_tasks', 'register_mixture', 'register_task', 'register_task_id',
           'short_name', 'task_id', 'task_id_map', 'task_ids_of', 'task_key', 'task_table',
           'task_vocabulary', 'tasks_of']

if 'hyperprompt_demo' not in seqio.MixtureRegistry.names():
  glue_super_glue.register_all()
  demo.register_all()


def get_mixture_or_task(name: str):
  """seqio lookup with a one-line error listing our names when `name` is unknown."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    ours = sorted(n for n in list(seqio.MixtureRegistry.names()) if n.startswith('hyperprompt'))
    raise ValueError(f'Unknown task or mixture {name!r}: registered mixtures include '
                     f'{", ".join(ours)} (import the module that registers yours).') from None


def benchmark_mixture(benchmark: str) -> str:
  """The proportional mixture of a benchmark: 'glue' -> 'hyperprompt_glue' (gin: BENCHMARK;
  'glue_super_glue' trains one model on both)."""
  if benchmark not in task_table.BENCHMARKS:
    raise ValueError(f"BENCHMARK={benchmark!r}: choose 'glue', 'super_glue' or "
                     "'glue_super_glue' (or set MIXTURE_OR_TASK_NAME directly).")
  return f'hyperprompt_{benchmark}'


def tasks_of(name: str):
  """The seqio tasks of a mixture, or [the task]."""
  provider = get_mixture_or_task(name)
  return list(provider.tasks) if isinstance(provider, seqio.Mixture) else [provider]


def task_ids_of(name: str):
  """Task ids a mixture or task emits (for the num_tasks check)."""
  return sorted(set(task_id_map(name).values()))


def task_id_map(name: str):
  """{seqio task name: task id} of a mixture's (or a task's) tasks."""
  return {t.name: TASK_IDS[t.name] for t in tasks_of(name) if t.name in TASK_IDS}
