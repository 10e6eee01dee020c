"""GLUE and SuperGLUE seqio tasks (TFDS, T5's text-to-text casting) and their mixtures.

Tasks: hyperprompt_glue_<task> for cola, sst2, mrpc, qqp, stsb, mnli (validation = matched),
mnli_mismatched (eval only), qnli, rte; hyperprompt_super_glue_<task> for boolq, cb, copa,
multirc, record, rte, wic, wsc (eval) and wsc_train (train only, positives as in T5), and
hyperprompt_super_glue_dpr (train only: Definite Pronoun Resolution cast as WSC, WSC's task
id, as T5 trains WSC). Mixtures: hyperprompt_glue, hyperprompt_super_glue,
hyperprompt_glue_super_glue (both: task ids are disjoint), proportional to T5's rates
(glue_v002_proportional, super_glue_v102_proportional: train sizes, ReCoRD counted per
answer, DPR included) capped at 2**19 examples; *_temperature (rates ** (1/2)); *_no_dpr
(without DPR, for when its TFDS data is not prepared); `register_mixture` makes others.
"""

from typing import Optional

import seqio
import tensorflow_datasets as tfds
from tensorflow_datasets.core import dataset_builder

from hyperprompt_tasks import metrics, task_table, text_to_text
from hyperprompt_tasks.vocab import output_features, task_vocabulary

GLUE_VERSION, SUPER_GLUE_VERSION = '2.0.0', '1.0.2'
DEFAULT_CAP = 2 ** 19

# Training examples per task, as T5 weighs its proportional mixtures (mock and unprepared
# datasets report no sizes, so the rates come from here): the train splits' sizes, except
# ReCoRD, counted as T5 trains it (one example per answer: 138,854 rows of 100,730
# queries), QQP (T5's 363,849; TFDS has 363,846) and WSC (its 259 positive examples).
# 'dpr': Definite Pronoun Resolution's 1,322 train sentences, trained under WSC's id.
TRAIN_SIZES = {
    'glue': {'cola': 8551, 'sst2': 67349, 'mrpc': 3668, 'qqp': 363849, 'stsb': 5749,
             'mnli': 392702, 'qnli': 104743, 'rte': 2490},
    'super_glue': {'boolq': 9427, 'cb': 250, 'copa': 400, 'multirc': 27243, 'record': 138854,
                   'rte': 2490, 'wic': 5428, 'wsc': 259, 'dpr': 1322},
}
DPR_VERSION = '1.1.0'
# Train-only tasks that share the id of the task they train (task table name -> trained task).
TRAINS_AS = {'dpr': 'wsc'}


def _is_tfds_mocked() -> bool:
  """True inside tfds.testing.mock_data, where nothing is read from disk."""
  fn = dataset_builder.DatasetBuilder.as_dataset
  return 'testing' in getattr(fn, '__module__', '')


class PreparedTfdsSource(seqio.TfdsDataSource):
  """A TFDS source that fails at once, naming the fix, when the dataset is not prepared
  locally (instead of minutes of download retries without network)."""

  def _check_prepared(self):
    if not _is_tfds_mocked():
      builder = tfds.builder(self.tfds_dataset.name, data_dir=self.tfds_dataset.data_dir)
      if not builder.is_prepared():
        raise RuntimeError(
            f'TFDS dataset {self.tfds_dataset.name} is not prepared in {builder.data_dir}: run '
            f'`tfds build {self.tfds_dataset.name.split(":")[0]}` on a machine with network '
            '(or copy the prepared data there, or set TFDS_DATA_DIR to it).')

  def get_dataset(self, split, *args, **kwargs):
    self._check_prepared()
    return super().get_dataset(split, *args, **kwargs)

  def list_shards(self, split):
    """(seqio asks for the shards first when the input is sharded over processes.)"""
    self._check_prepared()
    return super().list_shards(split)

  def num_input_examples(self, split):
    """The split's size when TFDS knows it; None for mock or unprepared data."""
    try:
      return super().num_input_examples(split)
    except (KeyError, ValueError):
      return None


def _register(benchmark, short, tfds_name, preprocessors, postprocess_fn, metric_fns,
              splits=None, task_short=None):
  tid = task_table.TABLES[benchmark][task_short or short]
  name = task_table.task_name(benchmark, short)
  seqio.TaskRegistry.add(
      name,
      source=PreparedTfdsSource(tfds_name=tfds_name,
                                splits=splits or {'train': 'train', 'validation': 'validation',
                                                  'test': 'test'}),
      preprocessors=list(preprocessors) + text_to_text.tail_preprocessors(tid),
      postprocess_fn=postprocess_fn,
      metric_fns=metric_fns,
      output_features=output_features(task_vocabulary(), task_table.num_tasks(benchmark)))
  task_table.TASK_IDS[name] = tid


GLUE_LABELS = {'cola': ['unacceptable', 'acceptable'], 'sst2': ['negative', 'positive'],
               'mrpc': ['not_equivalent', 'equivalent'], 'qqp': ['not_duplicate', 'duplicate'],
               'mnli': ['entailment', 'neutral', 'contradiction'],
               'qnli': ['entailment', 'not_entailment'], 'rte': ['entailment', 'not_entailment']}
GLUE_FEATURES = {'cola': ['sentence'], 'sst2': ['sentence'], 'mrpc': ['sentence1', 'sentence2'],
                 'qqp': ['question1', 'question2'], 'stsb': ['sentence1', 'sentence2'],
                 'mnli': ['hypothesis', 'premise'], 'qnli': ['question', 'sentence'],
                 'rte': ['sentence1', 'sentence2']}
GLUE_METRICS = {'cola': [metrics.matthews_corrcoef], 'sst2': [metrics.accuracy],
                'mrpc': [metrics.accuracy, metrics.f1], 'qqp': [metrics.accuracy, metrics.f1],
                'stsb': [metrics.pearson_spearman], 'mnli': [metrics.accuracy],
                'qnli': [metrics.accuracy], 'rte': [metrics.accuracy]}


def _register_glue():
  for short in task_table.GLUE:
    labels = GLUE_LABELS.get(short)
    pre = [text_to_text.classification(short, GLUE_FEATURES[short], labels)]
    post = metrics.to_float if labels is None else metrics.label_to_id(labels)
    tfds_name = f'glue/{short}:{GLUE_VERSION}'
    if short == 'mnli':
      _register('glue', 'mnli', tfds_name, pre, post, GLUE_METRICS['mnli'],
                splits={'train': 'train', 'validation': 'validation_matched',
                        'test': 'test_matched'})
      _register('glue', 'mnli_mismatched', tfds_name, pre, post, GLUE_METRICS['mnli'],
                splits={'validation': 'validation_mismatched', 'test': 'test_mismatched'},
                task_short='mnli')
    else:
      _register('glue', short, tfds_name, pre, post, GLUE_METRICS[short])


def _register_super_glue():
  sg = lambda name: f'super_glue/{name}:{SUPER_GLUE_VERSION}'
  pair = lambda prefix, feats, labels: [text_to_text.classification(prefix, feats, labels)]
  _register('super_glue', 'boolq', sg('boolq'), pair('boolq', ['passage', 'question'],
            ['False', 'True']), metrics.label_to_id(['False', 'True']), [metrics.accuracy])
  cb = ['entailment', 'contradiction', 'neutral']
  _register('super_glue', 'cb', sg('cb'), pair('cb', ['hypothesis', 'premise'], cb),
            metrics.label_to_id(cb), [metrics.accuracy, metrics.mean_multiclass_f1(3)])
  _register('super_glue', 'copa', sg('copa'),
            pair('copa', ['choice1', 'choice2', 'premise', 'question'], ['choice1', 'choice2']),
            metrics.label_to_id(['choice1', 'choice2']), [metrics.accuracy])
  _register('super_glue', 'multirc', sg('multirc'), [text_to_text.multirc], metrics.multirc,
            [metrics.multirc_f1_em])
  _register('super_glue', 'record', sg('record'), [text_to_text.record], metrics.record,
            [metrics.record_f1_em])
  rte = ['entailment', 'not_entailment']
  _register('super_glue', 'rte', sg('rte'), pair('rte', ['hypothesis', 'premise'], rte),
            metrics.label_to_id(rte), [metrics.accuracy])
  _register('super_glue', 'wic', sg('wic'), pair('wic', ['sentence1', 'sentence2', 'word'],
            ['False', 'True']), metrics.label_to_id(['False', 'True']), [metrics.accuracy])
  _register('super_glue', 'wsc', sg('wsc.fixed'), [text_to_text.wsc], metrics.wsc,
            [metrics.accuracy], splits={'validation': 'validation', 'test': 'test'})
  _register('super_glue', 'wsc_train', sg('wsc.fixed'),
            [text_to_text.keep_positive, text_to_text.wsc], metrics.wsc, [],
            splits={'train': 'train'}, task_short='wsc')
  _register('super_glue', 'dpr', f'definite_pronoun_resolution:{DPR_VERSION}',
            [text_to_text.dpr], None, [], splits={'train': 'train'},
            task_short=TRAINS_AS['dpr'])


def mixture_rates(benchmark: str, cap: Optional[int] = DEFAULT_CAP, temperature: float = 1.0):
  """Sampling rate of each task: min(train size, cap) ** (1 / temperature)."""
  sizes = TRAIN_SIZES[benchmark]
  return {short: float(min(n, cap) if cap else n) ** (1.0 / temperature)
          for short, n in sizes.items()}


def register_mixture(name: str, benchmark: str, cap: Optional[int] = DEFAULT_CAP,
                     temperature: float = 1.0, dpr: bool = True):
  """Registers a mixture of a benchmark's tasks ('glue_super_glue': both benchmarks' tasks,
  disjoint ids, one model); eval-only companions are included with the rate of the task
  they evaluate (seqio skips them when sampling the train split). dpr=False leaves
  Definite Pronoun Resolution out of SuperGLUE (T5 trains WSC with it)."""
  benchmarks = ('glue', 'super_glue') if benchmark == 'glue_super_glue' else (benchmark,)
  entries = []
  for one in benchmarks:
    for short, rate in mixture_rates(one, cap, temperature).items():
      if short == 'dpr' and not dpr:
        continue
      train_name = 'wsc_train' if short == 'wsc' else short
      entries.append((task_table.task_name(one, train_name), rate))
      companion = {'mnli': 'mnli_mismatched', 'wsc': 'wsc'}.get(short)
      if companion and companion != train_name:
        entries.append((task_table.task_name(one, companion), rate))
  seqio.MixtureRegistry.add(name, entries)


def register_all():
  _register_glue()
  _register_super_glue()
  for benchmark in task_table.BENCHMARKS:
    register_mixture(f'hyperprompt_{benchmark}', benchmark)
    register_mixture(f'hyperprompt_{benchmark}_temperature', benchmark, temperature=2.0)
    if benchmark != 'glue':
      register_mixture(f'hyperprompt_{benchmark}_no_dpr', benchmark, dpr=False)
