"""gin plumbing shared by train / eval / infer: configurables, flags, one-line errors.

Flags follow t5x: --gin_file (repeatable, stacked in order), --gin_search_paths (comma
separated), --gin.NAME=VALUE (a binding; a bare word is taken as a string, so
--gin.MODEL_DIR=/tmp/run works without quotes). The project's gin/ folder is always on the
search path. gin files use dynamic registration (as t5x's do), so the same model, size and
variant files serve our trainer and t5x's launcher.
"""

import argparse
import logging
import os
import re
import sys
from typing import List, Sequence

import gin


GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gin')



class ConfigError(ValueError):
  """A configuration problem, reported as one line that names the fix."""


def _binding(arg: str) -> str:
  name, _, value = arg[len('--gin.'):].partition('=')
  if not value:
    raise ConfigError(f'{arg}: write --gin.NAME=VALUE.')
  try:
    gin.config.parse_value(value)
    return f'{name} = {value}'
  except Exception:  # a bare word: a string
    return f'{name} = {value!r}'


def parse_flags(argv: Sequence[str], description: str):
  """Splits argv into (argparse namespace, gin files, bindings)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--gin_file', action='append', default=[],
                      help='gin file (repeatable; later files override earlier ones)')
  parser.add_argument('--gin_search_paths', default='',
                      help='comma-separated folders in which gin files and includes are found')
  gin_args = [a for a in argv if a.startswith('--gin.')]
  args = parser.parse_args([a for a in argv if not a.startswith('--gin.')])
  return args, args.gin_file, [_binding(a) for a in gin_args]


def parse_config(gin_files: List[str], bindings: List[str], search_paths: str = '') -> None:
  """Parses gin files and bindings with the project's gin/ on the search path."""
  paths = [GIN_DIR] + [p for p in search_paths.split(',') if p]
  for path in paths:
    gin.add_config_file_search_path(path)
  if not gin_files:
    raise ConfigError('No --gin_file given: pass e.g. --gin_file=runs/demo.gin.')
  resolved = []
  for name in gin_files:  # resolve here: gin logs an error for every place it looks in
    hits = [os.path.join(p, name) for p in [''] + paths if os.path.isfile(os.path.join(p, name))]
    if not hits:
      raise ConfigError(f'gin file {name} not found in the working directory or {paths}: '
                        'check the name or add its folder with --gin_search_paths.')
    resolved.append(hits[0])
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.CRITICAL)  # includes are searched for the same way
  try:
    gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=False)
  except (ValueError, IOError, KeyError, SyntaxError) as e:
    first = str(e).strip().splitlines()[0]
    if any(s in first for s in ('No configurable matching', "doesn't have a parameter",
                                'Unknown', 'not found')):
      raise ConfigError(f'Unknown gin binding: {first} — check the spelling against the gin '
                        'files under gin/.') from None
    raise ConfigError(f'gin configuration error: {first}') from None
  finally:
    root.setLevel(level)


def check_required_macros() -> None:
  """A macro left at %gin.REQUIRED is reported by name (gin passes it on silently)."""
  missing = []
  for (scope, selector), _ in list(gin.config._CONFIG.items()):  # pylint: disable=protected-access
    if selector.endswith('gin.macro') or selector == 'gin.macro':
      name = scope
      try:
        value = gin.query_parameter(f'%{name}')
      except ValueError:
        continue
      if repr(value) == '%gin.REQUIRED':
        missing.append(name)
  if missing:
    raise ConfigError(f'required gin macro {", ".join(sorted(missing))} is not set: pass '
                      f'--gin.{sorted(missing)[0]}=... (see the header of the run gin file).')


def setup_logging() -> None:
  """Our own messages at INFO on stderr; libraries stay at their (quieter) defaults."""
  log = logging.getLogger('hyperprompt_jax')
  if not log.handlers:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter('%(asctime)s hyperprompt: %(message)s', '%H:%M:%S'))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def run_main(fn, description: str, argv=None) -> None:
  """Parses flags and config, runs `fn()`, and turns configuration errors into one line."""
  setup_logging()
  argv = sys.argv[1:] if argv is None else argv
  try:
    args, files, bindings = parse_flags(argv, description)
    parse_config(files, bindings, args.gin_search_paths)
    check_required_macros()
    fn()
  except ConfigError as e:
    sys.exit(f'error: {e}')
  except (ValueError, RuntimeError, TypeError) as e:
    text = str(e).strip()
    if 'Required bindings' in text:  # a configurable argument left unbound
      missing = _required_name(text)
      sys.exit(f'error: required gin binding {missing} is missing: pass --gin.{missing}=... '
               'or a gin file that sets it.')
    if isinstance(e, TypeError) or os.environ.get('HYPERPROMPT_DEBUG'):
      raise  # a programming error, or asked for: the full traceback
    sys.exit(f'error: {text.splitlines()[0] if text else type(e).__name__} '
             '(HYPERPROMPT_DEBUG=1 shows the traceback)')


def _required_name(text: str) -> str:
  for pattern in (r"\['([A-Za-z_.]+)'", r"'([A-Za-z_.]+)'"):
    m = re.search(pattern, text)
    if m:
      return m.group(1).strip("'\" ")
  return '(see the gin file headers)'
