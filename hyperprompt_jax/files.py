"""File access that works for local paths and gs:// alike (tf.io.gfile)."""

import json
import logging
import os
from typing import Dict, List

from tensorflow.io import gfile


def is_remote(path: str) -> bool:
  return '://' in path


def expand(path: str) -> str:
  """'~' and $VARIABLES in a local path expanded (a literal './~' folder is never made)."""
  return path if is_remote(path) else os.path.expandvars(os.path.expanduser(path))


def absolute(path: str) -> str:
  return path if is_remote(path) else os.path.abspath(path)


def read_jsonl(path: str) -> List[Dict]:
  """The JSON objects of a JSON-lines file ([] if there is none). A torn last line (a run
  killed while writing it) is dropped with a warning naming the file; a bad line elsewhere
  is an error naming the file and line."""
  if not gfile.exists(path):
    return []
  with gfile.GFile(path) as f:
    lines = [(i + 1, line) for i, line in enumerate(f) if line.strip()]
  records = []
  for number, line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      if number == lines[-1][0] and not line.endswith('\n'):
        logging.getLogger('hyperprompt_jax').warning(
            '%s: dropped its torn last line %d (a run stopped while writing it).', path, number)
        continue
      raise ValueError(f'{path} line {number} is not JSON: fix or remove that line.') from None
    if not isinstance(record, dict):
      raise ValueError(f'{path} line {number} is not a JSON object: fix or remove that line.')
    records.append(record)
  return records


def write_text_atomic(path: str, text: str) -> None:
  """Writes via a temporary file and a rename, so readers never see half a file."""
  tmp = path + '.tmp'
  with gfile.GFile(tmp, 'w') as f:
    f.write(text)
  gfile.rename(tmp, path, overwrite=True)


def append_jsonl(path: str, record: Dict) -> None:
  """Appends one record (opened and closed per record, so several jobs can append to their
  own files at once; object stores cannot append, so there the file is rewritten)."""
  line = json.dumps(record) + '\n'
  if is_remote(path):
    text = ''
    if gfile.exists(path):
      with gfile.GFile(path) as f:
        text = f.read()
    write_text_atomic(path, text + line)
    return
  with open(path, 'a') as f:
    f.write(line)


class JsonlAppender:
  """Appends JSON records and flushes each one. Object stores (gs://) cannot append, so
  there the whole file is rewritten on every record."""

  def __init__(self, path: str, records: List[Dict]):
    self.path = path
    self.records = list(records)
    write_text_atomic(path, ''.join(json.dumps(r) + '\n' for r in self.records))
    self._file = None if is_remote(path) else open(path, 'a')

  def write(self, record: Dict) -> None:
    if self._file is not None:
      self._file.write(json.dumps(record) + '\n')
      self._file.flush()
      return
    self.records.append(record)
    write_text_atomic(self.path, ''.join(json.dumps(r) + '\n' for r in self.records))
