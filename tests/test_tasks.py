"""Tasks: text-to-text casting and task ids (TFDS mock data), metrics, mixtures, converter."""

import collections
import subprocess
import sys
import time

import numpy as np
import pytest
import seqio
import sentencepiece as spm
import tensorflow_datasets as tfds

import hyperprompt_tasks
from hyperprompt_tasks import demo, glue_super_glue, metrics, task_table
from hyperprompt_tasks.feature_converter import TaskIdEncDecFeatureConverter

LENGTHS = {'inputs': 512, 'targets': 64}


def _examples(name, split='validation', n=4):
  task = seqio.get_mixture_or_task(name)
  with tfds.testing.mock_data(num_examples=n):
    ds = task.get_dataset(LENGTHS, split=split, shuffle=False, use_cached=False)
    return [{k: v for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


GLUE_CASES = {
    'cola': ('cola sentence:', ['unacceptable', 'acceptable']),
    'sst2': ('sst2 sentence:', ['negative', 'positive']),
    'mrpc': ('mrpc sentence1:', ['not_equivalent', 'equivalent']),
    'qqp': ('qqp question1:', ['not_duplicate', 'duplicate']),
    'stsb': ('stsb sentence1:', None),
    'mnli': ('mnli hypothesis:', ['entailment', 'neutral', 'contradiction']),
    'mnli_mismatched': ('mnli hypothesis:', ['entailment', 'neutral', 'contradiction']),
    'qnli': ('qnli question:', ['entailment', 'not_entailment']),
    'rte': ('rte sentence1:', ['entailment', 'not_entailment']),
}


@pytest.mark.parametrize('short', sorted(GLUE_CASES))
def test_glue_tasks_cast_to_text_with_task_ids(short):
  prefix, labels = GLUE_CASES[short]
  rows = _examples(task_table.task_name('glue', short))
  assert rows
  expected_id = task_table.GLUE['mnli' if short.startswith('mnli') else short]
  for ex in rows:
    inputs, targets = ex['inputs_pretokenized'].decode(), ex['targets_pretokenized'].decode()
    assert inputs.startswith(prefix), inputs
    if labels is None:
      value = float(targets)
      assert abs(value * 5 - round(value * 5)) < 1e-6 and len(targets.split('.')[1]) == 1
    else:
      assert targets in labels
    assert ex['task_ids'].tolist() == [expected_id]
    assert ex['targets'][-1] == 1  # EOS


SUPER_GLUE_CASES = {
    'boolq': ('boolq passage:', ['False', 'True']),
    'cb': ('cb hypothesis:', ['entailment', 'contradiction', 'neutral']),
    'copa': ('copa choice1:', ['choice1', 'choice2']),
    'multirc': ('multirc question:', ['False', 'True']),
    'record': ('record query:', None),
    'rte': ('rte hypothesis:', ['entailment', 'not_entailment']),
    'wic': ('wic sentence1:', ['False', 'True']),
    'wsc': ('wsc:', None),
}


@pytest.mark.parametrize('short', sorted(SUPER_GLUE_CASES))
def test_super_glue_tasks_cast_to_text_with_task_ids(short):
  prefix, labels = SUPER_GLUE_CASES[short]
  rows = _examples(task_table.task_name('super_glue', short))
  assert rows
  for ex in rows:
    inputs, targets = ex['inputs_pretokenized'].decode(), ex['targets_pretokenized'].decode()
    assert inputs.startswith(prefix)
    if labels:
      assert targets in labels
    assert ex['task_ids'].tolist() == [task_table.SUPER_GLUE[short]]
  if short == 'wsc':
    assert all('*' in ex['inputs_pretokenized'].decode() for ex in rows)
  if short == 'record':
    for ex in rows:
      answers = [a.decode() for a in ex['answers']]
      assert ex['targets_pretokenized'].decode() in (answers or ['<unk>'])
      assert ' entities: ' in ex['inputs_pretokenized'].decode()


def test_wsc_train_keeps_only_positive_examples():
  rows = _examples('hyperprompt_super_glue_wsc_train', split='train', n=20)
  assert rows and all(ex['label'] == 1 for ex in rows)


def _preprocess(fn, **features):
  import tensorflow as tf
  ex = {k: ({kk: tf.constant(vv) for kk, vv in v.items()} if isinstance(v, dict)
            else tf.constant(v)) for k, v in features.items()}
  out = next(iter(fn(tf.data.Dataset.from_tensors(ex))))
  return {k: v.numpy() for k, v in out.items()}


def _wsc(text, pronoun, index, referent='Mark'):
  out = _preprocess(hyperprompt_tasks.text_to_text.wsc, text=text, span1_index=0,
                    span1_text=referent, span2_index=index, span2_text=pronoun, label=1, idx=0)
  assert out['targets'].decode() == referent
  return out['inputs'].decode()


def test_wsc_marks_the_pronoun_as_t5_does():
  """T5's wsc_simple inputs, written out by hand from T5's rule (the pronoun's word becomes
  'X', every ' X ' then ' *pronoun* '), including the two texts T5 corrects."""
  assert _wsc('Mark told Pete many lies about himself , which Pete included in his book .',
              'his', 12) == ('wsc: Mark told Pete many lies about himself , which Pete included '
                             'in *his* book .')
  # TFDS: 'him,"' is one word (span2_index 23) and the text ends in a space.
  pony = ('The boy continued to whip the pony , and eventually the pony threw him over. John '
          'laughed out quite loud. "Good for him," he said. ')
  assert _wsc(pony, 'him', 23) == (
      'wsc: The boy continued to whip the pony , and eventually the pony threw him over. John '
      'laughed out quite loud. "Good for *him* ," he said.')
  # TFDS: span2_index points at 'use', not at 'it'.
  pebble = ('When they had eventually calmed down a bit , and had gotten home, Mr. Farley put '
            'the magic pebble in an iron safe . Some day they might want to use it , but '
            'really for now, what more could they wish for?')
  assert _wsc(pebble, 'it', pebble.split(' ').index('use')) == 'wsc: ' + pebble.replace(
      'use it ,', 'use *it* ,')


def test_multirc_inputs_drop_html_markup_as_t5_does():
  out = _preprocess(hyperprompt_tasks.text_to_text.multirc, question='Who won?', answer='Bob',
                    paragraph='<b>Sent 1: </b>Bob ran.<br><b>Sent 2: </b>He won.<br>', label=1,
                    idx={'paragraph': 2, 'question': 5, 'answer': 9})
  assert out['inputs'].decode() == (
      'multirc question: Who won? answer: Bob paragraph: Sent 1: Bob ran. Sent 2: He won. ')
  assert out['targets'].decode() == 'True'


def test_dpr_is_cast_as_wsc():
  out = _preprocess(hyperprompt_tasks.text_to_text.dpr,
                    sentence='He said he would lend Tom his car, as he had two.', pronoun='he',
                    candidates=['Bob', 'Tom'], label=0)
  # The first ' he' followed by a space, '.' or ',' (not the sentence's first word).
  assert out['inputs'].decode() == 'wsc: He said *he* would lend Tom his car, as he had two.'
  assert out['targets'].decode() == 'Bob'


@pytest.mark.parametrize('prediction,referent,label,expected', [
    ('city councilmen', 'the city councilmen', 1, 1),
    ('the demonstrators', 'city councilmen', 0, 0),
    ('', 'Tom', 0, -1),            # nothing predicted: wrong on any label
    ('the', 'Tom', 0, -1),         # only ignored words
    ('Tom.', 'Tom', 1, 0),         # punctuation counts
    ('hat', "Bob's hat", 1, 0),    # one side has an apostrophe
    ("bob's hat", "Bob's hat", 1, 1),
    ('fuzzy bunny', 'bunny', 1, 1),
    ('few apples', 'those apples', 1, 1),
    (' Tom ', 'Tom', 1, 1),
])
def test_wsc_is_scored_as_t5_scores_it(prediction, referent, label, expected):
  example = {'targets_pretokenized': referent.encode(), 'label': label}
  assert metrics.wsc(prediction, example) == expected
  assert metrics.wsc(prediction, example, is_target=True) == label


def test_labels_are_looked_up_exactly_as_t5_does():
  """A label with surrounding whitespace is no label (T5's string_label_to_class_id)."""
  assert metrics.label_to_id(['unacceptable', 'acceptable'])(' unacceptable') == -1
  assert metrics.label_to_id(['unacceptable', 'acceptable'])('acceptable') == 1
  assert metrics.multirc(' True', {'group': 1, 'label': 1})['value'] == -1
  assert metrics.multirc('True', {'group': 1, 'label': 1})['value'] == 1


def test_metrics_on_hand_made_predictions():
  t, p = [1, 0, 1, 1, 0, 1], [1, 0, 0, 1, 1, 1]
  assert metrics.accuracy(t, p)['accuracy'] == pytest.approx(100 * 4 / 6)
  # tp=3, fp=1, fn=1 -> F1 = 6 / 8
  assert metrics.f1(t, p)['f1'] == pytest.approx(75.0)
  # tn=1: MCC = (3*1 - 1*1) / sqrt(4*4*2*2) = 2/8
  assert metrics.matthews_corrcoef(t, p)['matthews_corrcoef'] == pytest.approx(25.0)
  ps = metrics.pearson_spearman([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
  assert ps['spearman_corrcoef'] == pytest.approx(80.0)  # 1 - 6*2/(4*15)
  assert ps['pearson_corrcoef'] == pytest.approx(80.0)
  cb = metrics.mean_multiclass_f1(3)([0, 1, 2, 2], [0, 1, 1, 2])
  assert cb['mean_3class_f1'] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)
  mrc_t = [{'group': 1, 'value': 1}, {'group': 1, 'value': 0}, {'group': 2, 'value': 1}]
  mrc_p = [{'group': 1, 'value': 1}, {'group': 1, 'value': 0}, {'group': 2, 'value': 0}]
  m = metrics.multirc_f1_em(mrc_t, mrc_p)
  assert m['exact_match'] == pytest.approx(50.0) and m['f1'] == pytest.approx(100 * 2 / 3)
  rec_t = [{'group': 7, 'answers': ['Barack Obama', 'Obama']},
           {'group': 7, 'answers': ['Barack Obama', 'Obama']},
           {'group': 8, 'answers': ['the White House']}]
  r = metrics.record_f1_em(rec_t, ['obama', 'ignored duplicate', 'White House press'])
  assert r['em'] == pytest.approx(50.0)
  assert r['f1'] == pytest.approx(100 * (1.0 + 0.8) / 2)  # 'white house' vs 'white house press'


def test_invalid_predictions_count_as_t5_counts_them():
  """-1 is what the postprocessors give an output that is no label."""
  # Binary F1: invalid on a negative example is a false positive, on a positive one a false
  # negative: tp=1, fp=1, fn=1 -> 50 (reading -1 as 'negative' would give 66.7).
  assert metrics.f1([1, 0, 0, 1], [1, -1, 0, -1])['f1'] == pytest.approx(50.0)
  assert metrics.accuracy([1, 0, 0, 1], [1, -1, 0, -1])['accuracy'] == pytest.approx(50.0)
  # Matthews over labels {-1, 0, 1}: true counts (0, 2, 2), predicted (2, 1, 1), 2 of 4
  # correct: (2*4 - 4) / sqrt((16 - 6) * (16 - 8)).
  mcc = metrics.matthews_corrcoef([1, 0, 1, 0], [1, 0, -1, -1])['matthews_corrcoef']
  assert mcc == pytest.approx(100 * 4 / np.sqrt(80))
  # CB's mean F1 over the three real classes: the invalid prediction misses class 1.
  cb = metrics.mean_multiclass_f1(3)([0, 1, 2], [0, -1, 2])['mean_3class_f1']
  assert cb == pytest.approx(100 * 2 / 3)
  # MultiRC: an answer that is neither True nor False is -1, and wrong either way.
  ex = {'group': 3, 'label': 0}
  assert metrics.multirc('maybe', ex)['value'] == -1
  assert metrics.multirc('False', ex)['value'] == 0
  m = metrics.multirc_f1_em([{'group': 3, 'value': 0}, {'group': 3, 'value': 1}],
                            [{'group': 3, 'value': -1}, {'group': 3, 'value': 1}])
  assert m['f1'] == pytest.approx(100 * 2 / 3) and m['exact_match'] == 0.0
  assert metrics.label_to_id(['no', 'yes'])('perhaps') == -1
  assert metrics.to_float('n/a') == -1.0


def test_benchmark_scores_average_task_scores():
  per_task = {'cola': {'m': 40.0}, 'mrpc': {'accuracy': 80.0, 'f1': 90.0},
              'mnli': {'accuracy': 80.0}, 'mnli_mismatched': {'accuracy': 82.0}}
  score = metrics.benchmark_score(per_task, ['cola', 'mrpc', 'mnli'])
  assert score == pytest.approx((40.0 + 85.0 + 81.0) / 3)
  with pytest.raises(ValueError, match='missing'):
    metrics.benchmark_score(per_task, ['cola', 'rte'])


@pytest.mark.parametrize('benchmark', ['glue', 'super_glue'])
def test_mixtures_sample_every_task_at_the_documented_rate(benchmark):
  mixture = seqio.get_mixture_or_task(f'hyperprompt_{benchmark}')
  rates = glue_super_glue.mixture_rates(benchmark)
  total = sum(rates.values())
  n = 3000
  with tfds.testing.mock_data(num_examples=8):
    ds = mixture.get_dataset({'inputs': 512, 'targets': 64}, split='train', shuffle=True,
                             seed=1, use_cached=False, num_epochs=None)
    counts = collections.Counter(int(ex['task_ids'][0]) for ex in ds.take(n).as_numpy_iterator())
  table = task_table.TABLES[benchmark]
  by_id = collections.Counter()
  for short, rate in rates.items():  # DPR trains under WSC's id
    by_id[table[glue_super_glue.TRAINS_AS.get(short, short)]] += rate / total
  for tid, p in by_id.items():
    observed = counts[tid] / n
    assert abs(observed - p) < 4.5 * np.sqrt(p * (1 - p) / n) + 1e-3, (tid, observed, p)
  if benchmark == 'super_glue':  # T5's super_glue_v102_proportional: ReCoRD per answer
    assert by_id[table['record']] == pytest.approx(138854 / 185673)
    assert rates['dpr'] == 1322
  temp = glue_super_glue.mixture_rates(benchmark, temperature=2.0)
  assert temp['rte'] == pytest.approx(np.sqrt(2490))
  capped = glue_super_glue.mixture_rates('glue', cap=1000)
  assert capped['mnli'] == 1000 and capped['rte'] == 1000


def _segment_task(text):
  if text in ('positive', 'negative'):
    return task_table.DEMO['sentiment']
  if text in demo.TOPICS:
    return task_table.DEMO['topic']
  if text in demo.NAMES:
    return task_table.DEMO['extract']
  if text in ('equivalent', 'not_equivalent'):
    return task_table.DEMO['paraphrase']
  float(text)
  return task_table.DEMO['rating']


@pytest.mark.parametrize('pack', [False, True])
def test_converted_batches_carry_each_segments_task(pack):
  mixture = seqio.get_mixture_or_task('hyperprompt_demo')
  lengths = {'inputs': 128, 'targets': 16}
  ds = mixture.get_dataset(lengths, split='validation', shuffle=True, seed=3, num_epochs=1)
  converter = TaskIdEncDecFeatureConverter(pack=pack, max_segments=6)
  ds = converter(ds, lengths)
  vocab = hyperprompt_tasks.demo_vocabulary()
  seen_zero = checked = 0
  for row in ds.take(60).as_numpy_iterator():
    targets = row['decoder_target_tokens']
    if not pack:
      assert row['task_ids'].shape == ()
      text = vocab.decode([t for t in targets if t > 1])
      assert _segment_task(text) == row['task_ids']
      seen_zero += row['task_ids'] == 0
      checked += 1
      continue
    assert row['task_ids'].shape == (6,)
    segs = row['decoder_segment_ids']
    for s in range(1, segs.max() + 1):
      text = vocab.decode([t for t, g in zip(targets, segs) if g == s and t > 1])
      assert _segment_task(text) == row['task_ids'][s - 1], (text, row['task_ids'])
      seen_zero += row['task_ids'][s - 1] == 0
      checked += 1
    assert (row['task_ids'][segs.max():] == 0).all()
  assert seen_zero > 0  # task 0 survived conversion (and packing)
  assert checked == 60 if not pack else checked > 60  # packed rows held several examples


def test_demo_mixture_builds_offline_in_seconds():
  start = time.time()
  mixture = seqio.get_mixture_or_task('hyperprompt_demo')
  ds = mixture.get_dataset({'inputs': 64, 'targets': 8}, split='train', shuffle=True, seed=0)
  rows = list(ds.take(50).as_numpy_iterator())
  assert len(rows) == 50 and time.time() - start < 30
  assert {int(r['task_ids'][0]) for r in rows} == set(task_table.DEMO.values())
  assert max(len(r['inputs']) for r in rows) <= 64


def test_vocab_script_rebuilds_the_committed_vocabulary(tmp_path):
  """The build is deterministic; with the sentencepiece that trained the committed files it
  gives their pieces; it never overwrites them with another version's; and the committed
  model encodes the demo's text into the same pieces under any version."""
  from hyperprompt_tasks import build_vocab
  pieces = lambda path: [spm.SentencePieceProcessor(model_file=path).id_to_piece(i)
                         for i in range(spm.SentencePieceProcessor(model_file=path).get_piece_size())]
  built = []
  for name in ('a', 'b'):
    prefix = str(tmp_path / name)
    subprocess.run([sys.executable, '-m', 'hyperprompt_tasks.build_vocab', '--output', prefix],
                   check=True, capture_output=True)
    built.append(pieces(prefix + '.model'))
  assert built[0] == built[1] and len(built[0]) == build_vocab.VOCAB_SIZE
  if spm.__version__ == build_vocab.TRAINED_WITH:
    assert built[0] == pieces(hyperprompt_tasks.vocab.DEMO_VOCAB_PATH)
  else:
    before = open(hyperprompt_tasks.vocab.DEMO_VOCAB_PATH, 'rb').read()
    proc = subprocess.run([sys.executable, '-m', 'hyperprompt_tasks.build_vocab'],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and 'pass --output elsewhere' in proc.stderr
    assert open(hyperprompt_tasks.vocab.DEMO_VOCAB_PATH, 'rb').read() == before
  model = spm.SentencePieceProcessor(model_file=hyperprompt_tasks.vocab.DEMO_VOCAB_PATH)
  assert model.encode('review: the cafe zorbo in lima : the price was great .', out_type=str) == [
      '\u2581re', 'vi', 'e', 'w', ':', '\u2581t', 'h', 'e', '\u2581ca', 'f', 'e', '\u2581zorbo',
      '\u2581', 'in', '\u2581', 'li', 'ma', '\u2581', ':', '\u2581t', 'h', 'e', '\u2581p', 'ri',
      'ce', '\u2581w', 'as', '\u2581g', 'r', 'e', 'a', 't', '\u2581.']


def test_unknown_names_and_unprepared_datasets_fail_fast(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="Unknown task or mixture 'hyperprompt_gleu'"):
    hyperprompt_tasks.get_mixture_or_task('hyperprompt_gleu')
  with pytest.raises(ValueError, match='Unknown task'):
    task_table.task_id('glue/sst5')
  assert task_table.task_id('glue/rte') == 7 and task_table.task_id('hyperprompt_super_glue_wsc') == 15
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  task = seqio.get_mixture_or_task('hyperprompt_glue_rte')
  start = time.time()
  with pytest.raises(RuntimeError, match='is not prepared'):
    task.get_dataset(LENGTHS, split='validation', use_cached=False)
  # Input sharded over processes: seqio lists the shards first.
  with pytest.raises(RuntimeError, match='is not prepared.*tfds build glue'):
    task.get_dataset(LENGTHS, split='train', use_cached=False,
                     shard_info=seqio.ShardInfo(index=0, num_shards=2))
  assert time.time() - start < 20


def test_unreadable_vocabulary_is_one_line_naming_hyperprompt_vocab(tmp_path):
  missing = seqio.SentencePieceVocabulary(str(tmp_path / 'nope.model'), extra_ids=100)
  start = time.time()
  with pytest.raises(FileNotFoundError) as err:
    hyperprompt_tasks.vocab.check_vocabulary(missing)
  text = str(err.value)
  assert '\n' not in text and 'nope.model cannot be read' in text
  assert 'HYPERPROMPT_VOCAB' in text and time.time() - start < 20
  hyperprompt_tasks.vocab.check_vocabulary(hyperprompt_tasks.vocab.demo_vocabulary())
  from hyperprompt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  input_pipeline.check_sources('hyperprompt_demo')  # the shipped vocabulary: fine


def test_glue_and_super_glue_ids_are_disjoint_and_one_model_learns_both():
  glue, super_glue = set(task_table.GLUE.values()), set(task_table.SUPER_GLUE.values())
  assert not glue & super_glue and glue | super_glue == set(range(16))
  mixed = hyperprompt_tasks.task_ids_of(hyperprompt_tasks.benchmark_mixture('glue_super_glue'))
  assert mixed == list(range(16)) == list(range(task_table.num_tasks('glue_super_glue')))
  assert task_table.num_tasks('glue') == 8 and task_table.num_tasks('super_glue') == 16


def test_another_project_registers_a_task_with_its_own_id():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  name = 'test_project_reverse'
  tid = hyperprompt_tasks.next_free_id()
  assert tid == 16  # after GLUE and SuperGLUE

  def dataset(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({'inputs': ['a b c', 'd e'],
                                               'targets': ['c b a', 'e d']})
  source = seqio.FunctionDataSource(dataset, splits=['train', 'validation'])
  hyperprompt_tasks.register_task(name, tid, source=source, metric_fns=[metrics.accuracy])
  try:
    ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split='validation', shuffle=False)
    rows = list(ds.as_numpy_iterator())
    assert [r['task_ids'].tolist() for r in rows] == [[16], [16]]
    assert hyperprompt_tasks.task_id(name) == 16 and hyperprompt_tasks.next_free_id() == 17
    with pytest.raises(ValueError, match='Task id 16 is taken by test_project_reverse: .* 17'):
      task_table.register_task_id('test_project_other', 16)
    with pytest.raises(ValueError, match='Task id 3 is taken by hyperprompt_glue_qqp'):
      task_table.register_task_id('test_project_other', 3)
    with pytest.raises(ValueError, match='already registered'):
      hyperprompt_tasks.register_task(name, 17, source=source)
    # an eval-only companion shares the id of the task it evaluates
    task_table.register_task_id('test_project_reverse_eval', 16, evaluates=name)
    assert 'test_project_other' not in task_table.TASK_IDS
  finally:
    seqio.TaskRegistry.remove(name)
    task_table.TASK_IDS.pop(name, None)
    task_table.TASK_IDS.pop('test_project_reverse_eval', None)
