"""The docs check: every link of README.md, CHANGELOG.md and docs/*.md resolves to a file of
the repository (and a heading in it), and every command they show runs as written, as far as
it can run here: gin commands parse their files and bindings (misspelled macros, missing
files and unknown settings fail), the pod launcher prints its plan (--dry_run), and every
flag given to one of our scripts is one that script defines. (The demo itself runs in
tests/test_training.py and tests/test_wheel.py.)"""

import contextlib
import glob
import io
import os
import re
import shlex
import sys

import gin
import pytest

from hyperprompt_jax import gin_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(['README.md', 'CHANGELOG.md'] +
               [os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'docs', '*.md'))])
GIN_COMMANDS = ('hyperprompt_jax.train', 'hyperprompt_jax.eval', 'hyperprompt_jax.infer',
                'hyperprompt_jax.analysis')


def _read(page):
  with open(os.path.join(REPO, page)) as f:
    return f.read()


def _slug(heading):
  """GitHub's anchor of a heading."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def _commands(page):
  """Shell commands of a page: the lines of its ```bash blocks (continuations joined) and
  inline `python ...` spans."""
  text = _read(page)
  found = []
  for block in re.findall(r'```bash\n(.*?)```', text, re.S):
    joined = re.sub(r'\\\n\s*', ' ', block)
    found += [line.split('  #')[0].strip() for line in joined.splitlines()
              if line.strip() and not line.strip().startswith('#')]
  for span in re.findall(r'`(python [^`]+)`', text):
    found.append(' '.join(span.split()))
  return found


def test_every_link_resolves_to_a_file_and_heading():
  checked = 0
  for page in PAGES:
    for target in re.findall(r'\]\(([^)\s]+)\)', _read(page)):
      if re.match(r'[a-z]+://', target):
        continue
      path, _, anchor = target.partition('#')
      resolved = os.path.normpath(os.path.join(REPO, os.path.dirname(page), path)) if path \
          else os.path.join(REPO, page)
      assert os.path.exists(resolved), f'{page}: link to {target} (no such file)'
      if anchor:
        headings = re.findall(r'^#+ (.+)$', open(resolved).read(), re.M)
        assert anchor in {_slug(h) for h in headings}, f'{page}: no heading #{anchor} in {path}'
      checked += 1
  assert checked >= 20


def _gin_check(argv, command=True):
  """What a command does with its gin flags before it runs (command=False: only parse them,
  as benchmarks/tpu_fit.py does after runs/finetune.gin, filling the run's macros itself)."""
  gin.clear_config()
  try:
    args, files, bindings = gin_utils.parse_flags(argv, 'docs check')
    gin_utils.parse_config(files, bindings, args.gin_search_paths)
    if command:
      gin_utils.check_bound_macros(bindings)
      gin_utils.check_required_macros()
  finally:
    gin.clear_config()


def _script_source(words):
  if words[1] == '-m':
    module = words[2]
    path = os.path.join(REPO, *module.split('.')) + '.py'
  else:
    path = os.path.join(REPO, words[1])
  assert os.path.exists(path), f'no such script: {path}'
  return open(path).read()


def _check(command):
  words = shlex.split(command)
  if words[0] != 'python' or words[1:3] == ['-m', 'pytest'] or words[1] == '-c':
    return 'not ours'
  if len(words) == 3 and words[1] == '-m':
    return 'a mention of the command'
  if words[1] == '-m' and words[2].startswith('t5x.'):
    for arg in words:
      if arg.startswith('--gin_file='):
        assert os.path.exists(os.path.join(REPO, 'gin', arg.split('=', 1)[1])), arg
    return 't5x: gin files exist'
  if words[1] == '-m' and not words[2].startswith('hyperprompt_jax'):
    return 'not ours'
  if words[1] == 'launch/tpu_pod.py':
    sys.path.insert(0, os.path.join(REPO, 'launch'))
    import tpu_pod  # pylint: disable=import-outside-toplevel
    out = io.StringIO()
    argv = words[2:] if '--dry_run' in words else ['--dry_run'] + words[2:]
    with contextlib.redirect_stdout(out):
      assert tpu_pod.main(argv) == 0
    assert 'gcloud compute tpus' in out.getvalue()
    return _check(shlex.join(words[words.index('--') + 1:]))
  source = _script_source(words)
  if any('...' in w for w in words):
    return 'an abridged example: the script exists'
  if words[1] == '-m' and words[2] in GIN_COMMANDS:
    try:
      _gin_check(words[3:])
    except gin_utils.ConfigError as e:
      raise AssertionError(f'{command}: {e}') from None
    return 'gin parsed'
  gin_args = [w for w in words[2:] if w.startswith('--gin')]
  if gin_args:
    _gin_check(['--gin_file=runs/finetune.gin'] + gin_args, command=False)
  for word in words[2:]:
    flag = word.split('=', 1)[0]
    if flag.startswith('--') and not flag.startswith('--gin'):
      assert f"'{flag}'" in source, f'{command}: {flag} is not a flag of that script'
    elif re.fullmatch(r'to-[a-z0-9]+', word):
      assert f"'{word}'" in source, f'{command}: no sub-command {word}'
  return 'flags checked'


@pytest.mark.parametrize('page', PAGES)
def test_every_command_of_a_page_runs_as_written(page, monkeypatch):
  monkeypatch.setenv('HYPERPROMPT_VOCAB', 'demo')
  outcomes = [(command, _check(command)) for command in _commands(page)]
  if page in ('README.md', 'docs/training.md', 'docs/adding_tasks.md'):
    assert any(outcome == 'gin parsed' for _, outcome in outcomes), outcomes
