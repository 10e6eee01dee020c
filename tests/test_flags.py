"""t5x's gin flags: --gin_file, --gin_bindings, --gin.NAME=VALUE (gin values as gin, a bare
word as a string), one-line errors for unknown configurables, config.gin re-parseable,
--help with the files' macros."""

import subprocess
import sys

import gin
import pytest

from hyperprompt_jax import gin_utils
from hyperprompt_jax.config import HyperPromptConfig
from tests.test_training import REPO, _env


def _parse(*argv):
  gin.clear_config()
  args, files, bindings = gin_utils.parse_flags(['--gin_file=runs/demo.gin', *argv], 'test')
  gin_utils.parse_config(files, bindings, args.gin_search_paths)


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config()


def test_values_that_are_gin_are_taken_as_gin_and_bare_words_as_strings():
  _parse('--gin.MODEL_DIR=/tmp/run', '--gin.MIXTURE_OR_TASK_NAME=hyperprompt_demo_topic',
         '--gin.EVAL_EVERY_STEPS=%BATCH_SIZE', '--gin.BATCH_SIZE=4',
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
         '--gin.train.train.config=@network.HyperPromptConfig()',
         '--gin.network.HyperPromptConfig.num_heads=2', "--gin.NUM_PARTITIONS='1'")
  assert gin.query_parameter('%MODEL_DIR') == '/tmp/run'
  assert gin.query_parameter('%MIXTURE_OR_TASK_NAME') == 'hyperprompt_demo_topic'
  assert gin.query_parameter('%BATCH_SIZE') == 4
  assert gin.query_parameter('%TASK_FEATURE_LENGTHS') == {'inputs': 32, 'targets': 4}
  assert gin.query_parameter('%NUM_PARTITIONS') == '1'  # quoted: a string, as written
  bound = gin.get_bindings('hyperprompt_jax.train.train')
  assert bound['eval_every_steps'] == 4  # the macro reference, not the string '%BATCH_SIZE'
  assert isinstance(bound['config'], HyperPromptConfig) and bound['config'].num_heads == 2


def test_gin_bindings_flag_takes_whole_bindings_after_the_files():
  _parse('--gin_bindings=MODEL_DIR = "/tmp/a"', '--gin_bindings=BATCH_SIZE = 3')
  assert gin.query_parameter('%MODEL_DIR') == '/tmp/a'
  assert gin.query_parameter('%BATCH_SIZE') == 3


def test_unknown_configurable_and_unparseable_values_are_one_line_errors():
  with pytest.raises(gin_utils.ConfigError, match=r"Unknown configurable in a reference: .*@nope"):
    _parse('--gin.train.train.config=@nope.Thing()')
  with pytest.raises(gin_utils.ConfigError, match='does not parse as gin'):
    _parse("--gin.TASK_FEATURE_LENGTHS={'inputs': 32")
  with pytest.raises(gin_utils.ConfigError, match='Unknown gin binding'):
    _parse('--gin.train.train.not_a_setting=1')


def test_a_misspelled_macro_is_an_error_naming_the_closest_one():
  def check(*argv):
    args, files, bindings = gin_utils.parse_flags(['--gin_file=runs/demo.gin', *argv], 'test')
    gin.clear_config()
    gin_utils.parse_config(files, bindings, args.gin_search_paths)
    gin_utils.check_bound_macros(bindings)
  check('--gin.MODEL_DIR=/tmp/run', '--gin.TRAIN_STEPS=5', '--gin_bindings=BATCH_SIZE = 3')
  with pytest.raises(gin_utils.ConfigError,
                     match='--gin.TRAIN_STEP: no configuration reads the macro TRAIN_STEP; did '
                           'you mean TRAIN_STEPS?'):
    check('--gin.MODEL_DIR=/tmp/run', '--gin.TRAIN_STEP=5')
  with pytest.raises(gin_utils.ConfigError, match='did you mean INITIAL_CHECKPOINT_PATH?'):
    check('--gin.INITIAL_CHECKPOINT=gs://b/ckpt')
  with pytest.raises(gin_utils.ConfigError, match='no configuration reads the macro ZZZ; the '
                                                  'macros read are BATCH_SIZE'):
    check('--gin_bindings=ZZZ = 1')
  with pytest.raises(gin_utils.ConfigError, match=r'%TRAIN_STEP is read but no file or flag '
                                                  r'defines the macro TRAIN_STEP \(did you mean '
                                                  r'%TRAIN_STEPS\?\)'):
    check('--gin.MODEL_DIR=/tmp/run', '--gin.EVAL_EVERY_STEPS=%TRAIN_STEP')


def test_written_config_parses_back_to_the_same_run(tmp_path):
  _parse('--gin.MODEL_DIR=/tmp/run', '--gin.BATCH_SIZE=4',
         '--gin.network.HyperPromptConfig.variant=mtl')
  gin_utils.write_config(str(tmp_path))
  before = gin.get_bindings('hyperprompt_jax.train.train')
  gin.clear_config()
  gin.parse_config_file(str(tmp_path / 'config.gin'))
  after = gin.get_bindings('hyperprompt_jax.train.train')
  assert after == before and after['config'].variant == 'mtl' and after['batch_size'] == 4


def test_help_names_the_command_and_lists_the_macros():
  out = subprocess.run([sys.executable, '-m', 'hyperprompt_jax.train', '--help',
                        '--gin_file=runs/demo.gin'], env=_env(), cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith('usage: python -m hyperprompt_jax.train')
  assert '--gin_bindings' in out.stdout
  assert '  MODEL_DIR = REQUIRED' in out.stdout and '  BATCH_SIZE = 16' in out.stdout
