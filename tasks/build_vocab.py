"""Builds the demo SentencePiece vocabulary from the demo benchmark's training text.

    python -m hyperprompt_tasks.build_vocab [--output PREFIX]

Deterministic (one thread, no sampling): rebuilding with the sentencepiece that trained the
committed vocabulary (TRAINED_WITH) gives the committed pieces. Other sentencepiece versions
train other pieces (0.2.2, which the test extra pins for apache-beam's protobuf < 7, differs
from 0.2.3), so the script refuses to overwrite the committed files with them; encoding with
the committed model is the same under every version.
"""

import argparse
import os

import sentencepiece as spm

VOCAB_SIZE = 128
TRAINED_WITH = '0.2.3'  # the sentencepiece version that trained tasks/vocab/demo.model


def corpus():
  from hyperprompt_tasks import demo  # pylint: disable=import-outside-toplevel
  seen = []
  for rows in demo.examples('train').values():
    for r in rows:
      seen += [r['inputs'], r['targets']]
  return seen


def build(prefix: str):
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus()), model_prefix=prefix, vocab_size=VOCAB_SIZE,
      model_type='unigram', character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
      minloglevel=2)
  return prefix + '.model'


def main():
  here = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vocab', 'demo')
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output', default=here, help='model prefix (writes PREFIX.model/.vocab)')
  args = parser.parse_args()
  if os.path.abspath(args.output) == here and spm.__version__ != TRAINED_WITH:
    raise SystemExit(f'error: sentencepiece {spm.__version__} trains other pieces than '
                     f'{TRAINED_WITH}, which trained the committed demo vocabulary: pass '
                     f'--output elsewhere, or run with sentencepiece=={TRAINED_WITH}.')
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  print(build(args.output))


if __name__ == '__main__':
  main()
