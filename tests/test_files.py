"""metrics.jsonl and best.json writing works on object stores (tf's ram:// stands in for gs://)."""

import json

from tensorflow.io import gfile

from hyperprompt_jax import files


def test_jsonl_appender_on_local_and_object_store_paths(tmp_path):
  for path in (str(tmp_path / 'm.jsonl'), 'ram://hp_test/m.jsonl'):
    gfile.makedirs(path.rsplit('/', 1)[0])
    log = files.JsonlAppender(path, [{'step': 1, 'loss': 2.0}])
    log.write({'step': 2, 'loss': 1.5})
    log.write({'step': 2, 'eval/average': 50.0})
    assert files.read_jsonl(path) == [{'step': 1, 'loss': 2.0}, {'step': 2, 'loss': 1.5},
                                      {'step': 2, 'eval/average': 50.0}]


def test_atomic_write_replaces_whole_file():
  path = 'ram://hp_test/best.json'
  gfile.makedirs('ram://hp_test')
  files.write_text_atomic(path, json.dumps({'a': 1}))
  files.write_text_atomic(path, json.dumps({'b': 2}))
  with gfile.GFile(path) as f:
    assert json.load(f) == {'b': 2}
  assert not gfile.exists(path + '.tmp')
