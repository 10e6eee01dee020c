"""What every command shares: gin flags and files, multi-process start-up, one-line errors,
and model configs read from the gin files (the one source of model sizes).

Flags follow t5x: --gin_file (repeatable, stacked in order), --gin_search_paths (comma
separated), --gin_bindings (whole bindings) and --gin.NAME=VALUE (a value that parses as gin
is gin; a bare word is a string, so --gin.MODEL_DIR=/tmp/run works without quotes); --help
lists the macros of the files given. The project's gin/ folder is always on the
search path. gin files use dynamic registration (as t5x's do), so the same model, size and
variant files serve our trainer and t5x's launcher.
"""

import argparse
import contextlib
import difflib
import importlib
import logging
import os
import re
import sys
from typing import List, Optional, Sequence

import gin

from hyperprompt_jax import compile_cache, console
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import CONDITIONING_PARAMS_REGEX



def _gin_dir() -> str:
  """The project's gin files: inside the installed package (hyperprompt_jax/gin, where a
  wheel puts them) or, in a source checkout or editable install, the repository's gin/."""
  here = os.path.dirname(os.path.abspath(__file__))
  for path in (os.path.join(here, 'gin'), os.path.join(os.path.dirname(here), 'gin')):
    if os.path.isdir(os.path.join(path, 'runs')):
      return path
  raise ImportError(f'hyperprompt_jax: no gin files next to {here}: reinstall the package '
                    '(pip install hyperprompt_jax) or use a source checkout.')


GIN_DIR = _gin_dir()
gin.constant('hyperprompt_jax.CONDITIONING_PARAMS', CONDITIONING_PARAMS_REGEX)


class ConfigError(ValueError):
  """A configuration problem, reported as one line that names the fix."""


_GIN_SYNTAX = tuple('@%[{(\'"')


def _binding(arg: str) -> str:
  """--gin.NAME=VALUE -> a gin binding. A value that is gin (a reference, a macro, a
  container, a number, a quoted string, True/False/None) is taken as gin; only a bare word
  (a path, a task name) becomes a string."""
  name, _, value = arg[len('--gin.'):].partition('=')
  if not name or not value:
    raise ConfigError(f'{arg}: write --gin.NAME=VALUE.')
  value = value.strip()
  if value.startswith(('@', '%')):  # checked once the files' imports are known
    return f'{name} = {value}'
  try:
    gin.config.parse_value(value)
    return f'{name} = {value}'
  except Exception as e:  # pylint: disable=broad-except  (gin raises several kinds)
    if value.startswith(_GIN_SYNTAX):
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise ConfigError(f'{arg}: the value does not parse as gin ({reason}): fix the brackets '
                        'or quotes.') from None
    return f'{name} = {value!r}'


def parse_flags(argv: Sequence[str], description: str, prog: Optional[str] = None):
  """Splits argv into (argparse namespace, gin files, bindings). t5x's flags: --gin_file,
  --gin_search_paths, --gin_bindings (whole bindings, as gin writes them), --gin.NAME=VALUE."""
  parser = argparse.ArgumentParser(prog=prog, description=description)
  parser.add_argument('--gin_file', action='append', default=[],
                      help='gin file (repeatable; later files override earlier ones)')
  parser.add_argument('--gin_search_paths', default='',
                      help='comma-separated folders in which gin files and includes are found')
  parser.add_argument('--gin_bindings', action='append', default=[],
                      help="a gin binding, e.g. \"MODEL_DIR = '/tmp/run'\" (repeatable)")
  parser.add_argument('--coordinator_address', default=None,
                      help='host:port of process 0 for jax.distributed (several processes)')
  parser.add_argument('--process_count', type=int, default=None,
                      help='number of processes (with --coordinator_address)')
  parser.add_argument('--process_index', type=int, default=None,
                      help='this process (0 .. process_count-1)')
  parser.add_argument('--compilation_cache_dir', default=None,
                      help="jax's persistent compilation cache (default: "
                           '$HYPERPROMPT_COMPILATION_CACHE or ~/.cache/hyperprompt_jax/jax_cache; '
                           "a gs:// path works on pods; 'none' turns it off)")
  parser.epilog = ('--gin.NAME=VALUE binds a macro or parameter (a bare word is a string). '
                   'With --gin_file, --help also lists the macros of those files.')
  gin_args = [a for a in argv if a.startswith('--gin.')]
  args = parser.parse_args([a for a in argv if not a.startswith('--gin.')
                            and a not in ('-h', '--help')])
  if any(a in ('-h', '--help') for a in argv):
    parser.print_help()
    if args.gin_file:
      print('\nmacros of ' + ', '.join(args.gin_file) + ':')
      print(macros_help(args.gin_file, args.gin_search_paths))
    sys.exit(0)
  return args, args.gin_file, list(args.gin_bindings) + [_binding(a) for a in gin_args]


def macros_help(gin_files: List[str], search_paths: str = '') -> str:
  """'  NAME = value' for every macro the files define (REQUIRED ones say so)."""
  gin.clear_config()
  parse_config(gin_files, [], search_paths)
  lines = []
  for name in sorted(_macro_names()):
    value = gin.query_parameter(f'%{name}')
    text = 'REQUIRED' if repr(value) == '%gin.REQUIRED' else repr(value)
    lines.append(f'  {name} = {text}')
  gin.clear_config()
  return '\n'.join(lines)


def _macro_names() -> List[str]:
  names = []
  for (scope, selector), _ in list(gin.config._CONFIG.items()):  # pylint: disable=protected-access
    if selector.endswith('gin.macro') or selector == 'gin.macro':
      names.append(scope)
  return names


def write_config(model_dir: str) -> None:
  """The run's whole gin configuration as MODEL_DIR/config.gin (re-parseable), as t5x does."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    from hyperprompt_jax import files  # pylint: disable=import-outside-toplevel
    files.write_text_atomic(os.path.join(model_dir, 'config.gin'), gin.config_str())


@contextlib.contextmanager
def quiet_include_search():
  """gin logs an error for every search path an include is not found in: silence it."""
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    root.setLevel(level)


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
  try:
    with quiet_include_search():
      gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=False)
  except (ValueError, IOError, KeyError, SyntaxError) as e:
    first = str(e).strip().splitlines()[0]
    if 'No configurable matching reference' in first:
      raise ConfigError(f'Unknown configurable in a reference: {first} — check the name and '
                        'that a gin file imports its module.') from None
    if any(s in first for s in ('No configurable matching', "doesn't have a parameter",
                                'Unknown', 'not found')):
      raise ConfigError(f'Unknown gin binding: {first} — check the spelling against the gin '
                        'files under gin/.') from None
    raise ConfigError(f'gin configuration error: {first}') from None


def _referenced_macros() -> set:
  """Names of the macros some binding reads (%NAME), macros' own values included."""
  found = set()

  def walk(value):
    if isinstance(value, gin.config.ConfigurableReference):
      if value.configurable.name == 'macro':
        found.add(value.scoped_selector.split('/')[0])
    elif isinstance(value, (list, tuple, set)):
      for item in value:
        walk(item)
    elif isinstance(value, dict):
      for item in value.values():
        walk(item)
  for params in list(gin.config._CONFIG.values()):  # pylint: disable=protected-access
    walk(params)
  return found


def check_bound_macros(bindings: Sequence[str]) -> None:
  """A macro bound on the command line that no configuration reads is a misspelling
  (--gin.TRAIN_STEP=5 would otherwise train the file's TRAIN_STEPS): one line naming the
  closest macro the files do read."""
  bound = [m.group(1) for b in bindings
           for m in [re.match(r'\s*([A-Z][A-Z0-9_]*)\s*=', b)] if m]
  read = _referenced_macros()
  defined = set(_macro_names())
  for name in sorted(read - defined):
    close = difflib.get_close_matches(name, sorted(defined), n=1, cutoff=0.6)
    hint = f' (did you mean %{close[0]}?)' if close else ''
    raise ConfigError(f'%{name} is read but no file or flag defines the macro {name}{hint}: '
                      f'pass --gin.{name}=... or fix the reference.')
  for name in bound:
    if name not in read:
      close = difflib.get_close_matches(name, sorted(read), n=1, cutoff=0.6)
      hint = f'did you mean {close[0]}?' if close else f'the macros read are {", ".join(sorted(read))}.'
      raise ConfigError(f'--gin.{name}: no configuration reads the macro {name}; {hint}')


def check_required_macros() -> None:
  """A macro left at %gin.REQUIRED is reported by name (gin passes it on silently)."""
  missing = []
  for name in _macro_names():
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


# Environment variables that say jax can find the other processes by itself.
_CLUSTER_ENV = ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS',
                'SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE')


def initialize_distributed(coordinator_address: Optional[str], process_count: Optional[int],
                           process_index: Optional[int]) -> None:
  """jax.distributed from t5x's flags; without them, jax's auto-detection where a cluster
  announces itself (TPU VM pods, SLURM, Open MPI), else a single process. Call before
  anything touches devices."""
  explicit = (coordinator_address, process_count, process_index)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ConfigError('--coordinator_address, --process_count and --process_index go '
                        'together: pass all three (or none, for auto-detection).')
    if not 0 <= process_index < process_count:
      raise ConfigError(f'--process_index={process_index} is outside [0, {process_count}).')
    if process_count == 1:
      return
    import jax  # pylint: disable=import-outside-toplevel
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU processes only
    jax.distributed.initialize(coordinator_address, process_count, process_index)
    return
  hosts = [h for h in os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]
  pod = len(hosts) > 1 and not any(' ' in h for h in hosts)  # not libtpu's warning text
  if os.environ.get('HYPERPROMPT_MULTIHOST') or pod or any(
      os.environ.get(k) for k in _CLUSTER_ENV if k != 'TPU_WORKER_HOSTNAMES'):
    import jax  # pylint: disable=import-outside-toplevel
    jax.distributed.initialize()


def run_command(module: str, function: str, description: str, argv=None, show=None) -> None:
  """A command's main: flags, jax.distributed, gin config, then `module.function()` (the
  importable module's function, which gin binds, also when `module` runs as __main__)."""
  def call():
    result = getattr(importlib.import_module(module), function)()
    if show is not None:
      show(result)
  run_main(call, description, argv, prog=f'python -m {module}')


def _fail(message: str, traceback_hint: bool = True) -> None:
  """Exits with one `error:` line (naming the other libraries' log, kept, when there is one)."""
  message = (message.strip().splitlines() or ['error'])[0]  # gin adds "In call to ..." lines
  notes = ['HYPERPROMPT_DEBUG=1 shows the traceback'] if traceback_hint else []
  kept = console.keep()
  if kept:
    notes.append(f"other libraries' messages: {kept}")
  sys.exit(f'error: {message}' + (f' ({"; ".join(notes)})' if notes else ''))


def run_main(fn, description: str, argv=None, prog: Optional[str] = None) -> None:
  """Parses flags and config, runs `fn()`, and turns configuration errors into one line."""
  setup_logging()
  argv = sys.argv[1:] if argv is None else argv
  debug = os.environ.get('HYPERPROMPT_DEBUG')
  try:
    args, files, bindings = parse_flags(argv, description, prog)
    initialize_distributed(args.coordinator_address, args.process_count, args.process_index)
    compile_cache.configure(args.compilation_cache_dir)
    parse_config(files, bindings, args.gin_search_paths)
    check_bound_macros(bindings)
    check_required_macros()
    fn()
  except ConfigError as e:
    _fail(str(e), traceback_hint=False)
  except (ValueError, RuntimeError, TypeError) as e:
    text = str(e).strip()
    if 'Required bindings' in text:  # a configurable argument left unbound
      missing = _required_name(text)
      _fail(f'required gin binding {missing} is missing: pass --gin.{missing}=... or a gin '
            'file that sets it.', traceback_hint=False)
    if isinstance(e, TypeError) or debug:
      raise  # a programming error, or asked for: the full traceback
    _fail(text.splitlines()[0] if text else type(e).__name__)
  except OSError as e:  # a file or folder that cannot be read or written
    if debug:
      raise
    what = f'{e.strerror}: {e.filename}' if e.filename else (str(e) or type(e).__name__)
    _fail(f'{what}: check the path and its permissions')
  except Exception as e:  # pylint: disable=broad-except
    # TensorFlow's file errors (tf.io.gfile on local paths and gs://) are ours to explain;
    # anything else is a bug and keeps its traceback.
    if type(e).__module__.startswith('tensorflow') and hasattr(e, 'error_code') and not debug:
      text = (getattr(e, 'message', '') or str(e)).strip().splitlines()
      _fail(f'{text[0] if text else type(e).__name__}: check the path and its permissions')
    raise


def _required_name(text: str) -> str:
  for pattern in (r"\['([A-Za-z_.]+)'", r"'([A-Za-z_.]+)'"):
    m = re.search(pattern, text)
    if m:
      return m.group(1).strip("'\" ")
  return '(see the gin file headers)'


@gin.configurable
def _model_config(config: HyperPromptConfig = gin.REQUIRED) -> HyperPromptConfig:
  return config


def model_config(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> HyperPromptConfig:
  """The HyperPromptConfig that gin files (e.g. models/base.gin, variants/mtl.gin) and
  bindings describe; gin's global state is left as it was found (empty)."""
  gin.clear_config()
  try:
    gin.add_config_file_search_path(GIN_DIR)
    gin.parse_config(['from __gin__ import dynamic_registration',
                      'from hyperprompt_jax import gin_utils', 'from hyperprompt_jax import network',
                      'gin_utils._model_config.config = @network.HyperPromptConfig()'])
    paths = [f if os.path.isabs(f) else os.path.join(GIN_DIR, f) for f in gin_files]
    with quiet_include_search():
      gin.parse_config_files_and_bindings(paths, list(bindings), finalize_config=False)
    return _model_config()
  finally:
    gin.clear_config()
