"""The task tables: a stable id for every task of each benchmark.

Ids index the model's task axis (`HyperPromptConfig.num_tasks`). GLUE takes ids 0-7 and
SuperGLUE 8-15, disjoint, so one model can learn both benchmarks (num_tasks 16; a
SuperGLUE-only model needs 16 rows too, the first 8 unused). Another project's task takes
an id of its own with `register_task_id` (next_free_id() gives the first unused one). Ids
never change once published: a task added later takes the next free id. Eval-only
companions (mnli mismatched, the WSC eval task) share the id of the task they evaluate. The
offline demo is a model of its own, with its own table (ids 0-4).
"""

from typing import Dict, Optional

GLUE = {'cola': 0, 'sst2': 1, 'mrpc': 2, 'qqp': 3, 'stsb': 4, 'mnli': 5, 'qnli': 6, 'rte': 7}
SUPER_GLUE = {'boolq': 8, 'cb': 9, 'copa': 10, 'multirc': 11, 'record': 12, 'rte': 13,
              'wic': 14, 'wsc': 15}
DEMO = {'sentiment': 0, 'topic': 1, 'rating': 2, 'extract': 3, 'paraphrase': 4}

TABLES: Dict[str, Dict[str, int]] = {'glue': GLUE, 'super_glue': SUPER_GLUE, 'demo': DEMO}

# seqio task name -> task id, for every registered task (filled in as tasks register).
TASK_IDS: Dict[str, int] = {}


def task_name(benchmark: str, task: str) -> str:
  return f'hyperprompt_{benchmark}_{task}'


def short_name(name: str) -> str:
  """'hyperprompt_glue_rte' -> 'rte' (names of other tasks are returned unchanged). Unique
  within a benchmark only: `task_key` is unique across benchmarks."""
  benchmark = benchmark_of(name)
  return name[len(task_name(benchmark, '')):] if benchmark else name


def benchmark_of(name: str) -> Optional[str]:
  """'hyperprompt_super_glue_rte' -> 'super_glue'; None for another project's task."""
  for benchmark in sorted(TABLES, key=len, reverse=True):  # 'super_glue' before 'glue'
    if name.startswith(task_name(benchmark, '')):
      return benchmark
  return None


def _shared_short_names():
  seen, shared = set(), set()
  for table in TABLES.values():
    shared |= seen & set(table)
    seen |= set(table)
  return shared


SHARED_SHORT_NAMES = _shared_short_names()  # {'rte'}: GLUE's and SuperGLUE's


def task_key(name: str) -> str:
  """The name a task is reported under (console rows, prediction files, TensorBoard folders,
  experiments' columns): its short name, qualified by its benchmark where two benchmarks
  share that short name: 'hyperprompt_glue_cola' -> 'cola', 'hyperprompt_glue_rte' ->
  'glue_rte', 'hyperprompt_super_glue_rte' -> 'super_glue_rte'. Unique across benchmarks."""
  short, benchmark = short_name(name), benchmark_of(name)
  if benchmark and short in SHARED_SHORT_NAMES:
    return f'{benchmark}_{short}'
  return short


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


BENCHMARKS = ('glue', 'super_glue', 'glue_super_glue')  # glue_super_glue: both, one model


def num_tasks(benchmark: str) -> int:
  """Rows of the task table a model of `benchmark` needs (its highest id + 1): glue 8,
  super_glue and glue_super_glue 16, demo 5."""
  if benchmark == 'glue_super_glue':
    return max(max(GLUE.values()), max(SUPER_GLUE.values())) + 1
  if benchmark not in TABLES:
    raise ValueError(f'Unknown benchmark {benchmark!r}: choose one of '
                     f'{", ".join(BENCHMARKS + ("demo",))}.')
  return max(TABLES[benchmark].values()) + 1


def next_free_id() -> int:
  """The first task id that neither GLUE, SuperGLUE nor a registered task uses."""
  used = set(GLUE.values()) | set(SUPER_GLUE.values()) | set(TASK_IDS.values())
  return max(used) + 1


def register_task_id(name: str, tid: int, evaluates: Optional[str] = None) -> int:
  """Gives the seqio task `name` the task id `tid` (another project's task; a model that
  learns it needs num_tasks > tid). `evaluates`: the registered task whose id an eval-only
  companion shares. Registering the same pair twice is a no-op; an id another task holds
  is refused, naming the next free id. Returns tid."""
  if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
    raise ValueError(f'Task id {tid!r} for {name!r}: use a non-negative integer, e.g. '
                     f'next_free_id() = {next_free_id()}.')
  if TASK_IDS.get(name, tid) != tid:
    raise ValueError(f'Task {name!r} already has id {TASK_IDS[name]}; ids never change.')
  if evaluates is not None:
    if TASK_IDS.get(evaluates) != tid:
      raise ValueError(f'{name!r} evaluates {evaluates!r}, whose id is '
                       f'{TASK_IDS.get(evaluates, "unregistered")}, not {tid}.')
  else:
    holders = sorted(n for n, i in TASK_IDS.items() if i == tid and n != name
                     and not n.startswith(task_name('demo', '')))  # the demo is its own model
    if not holders and tid in set(GLUE.values()) | set(SUPER_GLUE.values()):
      holders = ['GLUE/SuperGLUE']
    if holders:
      holder = holders[0]
      raise ValueError(f'Task id {tid} is taken by {holder}: give {name!r} the next free id, '
                       f'{next_free_id()} (hyperprompt_tasks.next_free_id()).')
  TASK_IDS[name] = tid
  return tid
