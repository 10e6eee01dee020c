"""The task tables: a stable id for every task of each benchmark.

Ids index the model's task axis (`HyperPromptConfig.num_tasks`). They never change: a task
added later takes the next free id. Eval-only companions (mnli mismatched, the WSC eval task)
share the id of the task they evaluate.
"""

from typing import Dict

GLUE = {'cola': 0, 'sst2': 1, 'mrpc': 2, 'qqp': 3, 'stsb': 4, 'mnli': 5, 'qnli': 6, 'rte': 7}
SUPER_GLUE = {'boolq': 0, 'cb': 1, 'copa': 2, 'multirc': 3, 'record': 4, 'rte': 5, 'wic': 6,
              'wsc': 7}
DEMO = {'sentiment': 0, 'topic': 1, 'rating': 2, 'extract': 3, 'paraphrase': 4}

TABLES: Dict[str, Dict[str, int]] = {'glue': GLUE, 'super_glue': SUPER_GLUE, 'demo': DEMO}

# seqio task name -> task id, for every registered task (filled in as tasks register).
TASK_IDS: Dict[str, int] = {}


def task_name(benchmark: str, task: str) -> str:
  return f'hyperprompt_{benchmark}_{task}'


def short_name(name: str) -> str:
  """'hyperprompt_glue_rte' -> 'rte' (names of other tasks are returned unchanged)."""
  for benchmark in TABLES:
    prefix = task_name(benchmark, '')
    if name.startswith(prefix):
      return name[len(prefix):]
  return name


def task_id(name: str) -> int:
  """Task id of a registered task, by seqio name ('hyperprompt_glue_rte') or short name
  within a benchmark ('glue/rte')."""
  if '/' in name:
    benchmark, short = name.split('/', 1)
    if benchmark in TABLES and short in TABLES[benchmark]:
      return TABLES[benchmark][short]
  if name in TASK_IDS:
    return TASK_IDS[name]
  raise ValueError(f'Unknown task {name!r}: use a registered name such as '
                   f'{sorted(TASK_IDS)[:3]} or benchmark/task like "glue/rte".')


def num_tasks(benchmark: str) -> int:
  return max(TABLES[benchmark].values()) + 1
