"""Vocabularies: T5's public SentencePiece model for GLUE/SuperGLUE, the shipped one for the demo.

GLUE and SuperGLUE tasks tokenize with the vocabulary named by the environment variable
HYPERPROMPT_VOCAB when `hyperprompt_tasks` is first imported: unset means T5's public model
(gs://t5-data/vocabs/cc_all.32000/sentencepiece.model, 100 extra ids), 'demo' means the
small vocabulary shipped in this package (offline tests), anything else is a SentencePiece
model path. gin files use `@hyperprompt_tasks.task_vocabulary()` so that the model's
vocabulary is always the one the tasks were built with.
"""

import os
import threading

import gin
import seqio
import tensorflow as tf

T5_VOCAB_PATH = 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model'
T5_EXTRA_IDS = 100
DEMO_VOCAB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vocab',
                               'demo.model')


@gin.configurable(module='hyperprompt_tasks')
def demo_vocabulary() -> seqio.SentencePieceVocabulary:
  """The small SentencePiece vocabulary built by `python -m hyperprompt_tasks.build_vocab`."""
  return seqio.SentencePieceVocabulary(DEMO_VOCAB_PATH, extra_ids=0)


@gin.configurable(module='hyperprompt_tasks')
def task_vocabulary() -> seqio.Vocabulary:
  """The vocabulary of the GLUE and SuperGLUE tasks (see module docstring)."""
  choice = os.environ.get('HYPERPROMPT_VOCAB', '')
  if choice == 'demo':
    return demo_vocabulary()
  if choice:
    return seqio.SentencePieceVocabulary(choice, extra_ids=T5_EXTRA_IDS)
  return seqio.SentencePieceVocabulary(T5_VOCAB_PATH, extra_ids=T5_EXTRA_IDS)


def output_features(vocabulary: seqio.Vocabulary, num_tasks: int):
  return {
      'inputs': seqio.Feature(vocabulary, add_eos=True, required=False),
      'targets': seqio.Feature(vocabulary, add_eos=True),
      'task_ids': seqio.Feature(seqio.PassThroughVocabulary(num_tasks), add_eos=False),
  }


_REACHABLE = set()


def check_vocabulary(vocabulary: seqio.Vocabulary, timeout_seconds: float = 30.0) -> None:
  """Fails at once, in one line naming HYPERPROMPT_VOCAB, when a SentencePiece model cannot
  be read (no network for gs://, a wrong path), instead of deep inside tf.data later."""
  path = getattr(vocabulary, 'sentencepiece_model_file', None)
  if not path or path in _REACHABLE:
    return
  outcome = {}

  def probe():
    try:
      outcome['exists'] = tf.io.gfile.exists(path)
    except Exception as e:  # pylint: disable=broad-except  (tf raises per file system)
      outcome['error'] = (str(e).strip().splitlines() or [type(e).__name__])[0]
  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout_seconds)
  if outcome.get('exists'):
    _REACHABLE.add(path)
    return
  reason = outcome.get('error') or ('no answer in %d s' % timeout_seconds if thread.is_alive()
                                    else 'no such file')
  raise FileNotFoundError(
      f'vocabulary {path} cannot be read ({reason[:200]}): set HYPERPROMPT_VOCAB to a local '
      f'copy of the SentencePiece model (e.g. gsutil cp {path} .), or HYPERPROMPT_VOCAB=demo '
      'for the small offline vocabulary.')
