"""jax's persistent compilation cache, on by default for every command (t5x's
--compilation_cache_dir): a restarted run (a preemption, a rerun, the next eval) loads its
compiled steps instead of compiling them again.

The directory: --compilation_cache_dir, else $HYPERPROMPT_COMPILATION_CACHE, else
~/.cache/hyperprompt_jax/jax_cache; 'none' turns the cache off. A gs:// path works on pods
(every host reads the same entries). Every compiled program is stored, not only those that
take jax's default second to compile: a restart also skips the many small ones (parameter
initialisation, the saved-loss check, evaluation), about 3 s of the demo's warm start.
"""

import logging
import os
import threading
from typing import Dict, Optional

import jax

log = logging.getLogger('hyperprompt_jax')

DEFAULT_DIR = os.path.join('~', '.cache', 'hyperprompt_jax', 'jax_cache')
ENV = 'HYPERPROMPT_COMPILATION_CACHE'
_HIT, _MISS = '/jax/compilation_cache/cache_hits', '/jax/compilation_cache/cache_misses'
_counts: Dict[str, int] = {_HIT: 0, _MISS: 0}
_lock = threading.Lock()
_listening = False
_directory: Optional[str] = None


def _count(event: str, **kwargs) -> None:
  del kwargs
  if event in _counts:
    with _lock:
      _counts[event] += 1


def default_dir() -> str:
  return os.environ.get(ENV) or DEFAULT_DIR


def configure(directory: Optional[str] = None) -> Optional[str]:
  """Points jax's persistent compilation cache at `directory` (default: default_dir());
  'none' (or '') turns it off. Returns the directory used, or None."""
  global _listening, _directory
  directory = default_dir() if directory is None else directory
  if directory.strip().lower() in ('', 'none'):
    jax.config.update('jax_enable_compilation_cache', False)
    _directory = None
    return None
  directory = os.path.expandvars(os.path.expanduser(directory))
  if '://' not in directory:
    os.makedirs(directory, exist_ok=True)
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  if not _listening:
    jax.monitoring.register_event_listener(_count)
    _listening = True
  _directory = directory
  return directory


def hits() -> int:
  """Compiled programs loaded from the persistent cache so far in this process."""
  return _counts[_HIT]


def describe(seconds: float, hits_before: int) -> str:
  """'compiled in 12.3 s' or 'loaded from the compilation cache (DIR) in 0.8 s', for the
  compilations between `hits_before` (hits() before them) and now."""
  if hits() > hits_before:
    return f'loaded from the compilation cache ({_directory}) in {seconds:.1f} s'
  where = f'; cached in {_directory}' if _directory else ' (compilation cache off)'
  return f'compiled in {seconds:.1f} s{where}'
