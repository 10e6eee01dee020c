"""Another project's task in the task table: a seqio task with a task id of its own.

    import hyperprompt_tasks
    hyperprompt_tasks.register_task(
        'myproject_sentiment', hyperprompt_tasks.next_free_id(),  # 16: after GLUE, SuperGLUE
        source=seqio.TfdsDataSource('imdb_reviews:1.0.0'),
        preprocessors=[my_text_to_text],  # examples -> {'inputs': str, 'targets': str}
        metric_fns=[hyperprompt_tasks.metrics.accuracy])

then mix it with others (seqio.MixtureRegistry.add or register_mixture) and give the model
num_tasks greater than every id the mixture uses (the trainer checks).
"""

from typing import Callable, Optional, Sequence

import seqio

from hyperprompt_tasks import task_table, text_to_text
from hyperprompt_tasks.vocab import output_features, task_vocabulary


def register_task(name: str, task_id: int, *, source: seqio.DataSource,
                  preprocessors: Sequence[Callable] = (),
                  postprocess_fn: Optional[Callable] = None, metric_fns: Sequence[Callable] = (),
                  vocabulary: Optional[seqio.Vocabulary] = None,
                  evaluates: Optional[str] = None) -> seqio.Task:
  """Registers a text-to-text seqio task with id `task_id` (see task_table.register_task_id;
  `evaluates` names the task an eval-only companion shares its id with). `preprocessors`
  turn the source's examples into 'inputs' and 'targets' strings; the task id, tokenisation
  (the run's vocabulary unless `vocabulary`), seqio's cache placeholder and EOS are appended
  as for the GLUE tasks."""
  if name in seqio.TaskRegistry.names():
    raise ValueError(f'A seqio task named {name!r} is already registered: choose another name.')
  task_table.register_task_id(name, task_id, evaluates)
  return seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=list(preprocessors) + text_to_text.tail_preprocessors(task_id),
      postprocess_fn=postprocess_fn, metric_fns=list(metric_fns),
      output_features=output_features(vocabulary or task_vocabulary(), task_id + 1))
