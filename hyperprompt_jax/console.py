"""A quiet console for the commands (`python -m hyperprompt_jax.<command>`): the terminal shows
the project's own lines; what other libraries print (TensorFlow's and XLA's C++ notices,
absl's, seqio's dataset warnings, libtpu's probe of a machine without a TPU) goes to a log
file instead. The trainer keeps that file as MODEL_DIR/logs/train_<process>.log; another
command's is named in its error line when it fails, and removed when it succeeds.
HYPERPROMPT_DEBUG=1 leaves everything on the terminal.

How: before TensorFlow or jax are imported (hyperprompt_jax/__init__.py calls `quiet` when a
command starts), file descriptor 2 is pointed at the log file, so native libraries write
there, while Python's sys.stderr, which our logger and error lines use, keeps the terminal;
Python's root logger and warnings go to the file as well.
"""

import atexit
import logging
import os
import sys
import tempfile
from typing import Optional

_path: Optional[str] = None
_destination: Optional[str] = None
_keep = False


def quiet() -> Optional[str]:
  """Routes other libraries' output to a log file (idempotent); returns its path, or None
  with HYPERPROMPT_DEBUG set."""
  global _path
  if _path is not None or os.environ.get('HYPERPROMPT_DEBUG'):
    return _path
  fd, path = tempfile.mkstemp(prefix='hyperprompt_', suffix='.log')
  terminal = os.dup(2)
  sys.stderr.flush()
  os.dup2(fd, 2)
  os.close(fd)
  sys.stderr = os.fdopen(terminal, 'w', buffering=1, errors='backslashreplace')
  root = logging.getLogger()
  for handler in list(root.handlers):
    root.removeHandler(handler)
  root.addHandler(logging.FileHandler(path))
  root.setLevel(logging.INFO)
  logging.captureWarnings(True)
  _path = path
  atexit.register(_finish)
  return path


def keep_in(destination: str) -> None:
  """At exit, the log is appended to `destination` (local or gs://) instead of removed."""
  global _destination
  _destination = destination


def keep() -> Optional[str]:
  """The log is left where it is at exit (a failed command names it); returns its path."""
  global _keep
  _keep = True
  return _path


def _finish() -> None:
  if _path is None:
    return
  try:
    os.fsync(2)
  except OSError:
    pass
  if _destination:
    from tensorflow.io import gfile  # pylint: disable=import-outside-toplevel
    with open(_path, errors='replace') as f:
      text = f.read()
    try:
      gfile.makedirs(os.path.dirname(_destination))
      old = ''
      if gfile.exists(_destination):
        with gfile.GFile(_destination) as f:
          old = f.read()
      with gfile.GFile(_destination, 'w') as f:
        f.write(old + text)
    except Exception:  # pylint: disable=broad-except  (at exit: never hide the run's outcome)
      return
  if _destination or not _keep:
    try:
      os.remove(_path)
    except OSError:
      pass
