"""File access that works for local paths and gs:// alike (tf.io.gfile)."""

import json
import os
from typing import Dict, List

from tensorflow.io import gfile


def is_remote(path: str) -> bool:
  return '://' in path


def absolute(path: str) -> str:
  return path if is_remote(path) else os.path.abspath(path)


def read_jsonl(path: str) -> List[Dict]:
  if not gfile.exists(path):
    return []
  with gfile.GFile(path) as f:
    return [json.loads(line) for line in f if line.strip()]


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
