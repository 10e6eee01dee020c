"""Every gin file that needs no t5x parses, binds against our modules and builds a valid
config; size files hold dimensions only; t5x's files are covered in test_t5x.py."""

import glob
import os

import gin
import pytest

from hyperprompt_jax import gin_utils, param_report
from hyperprompt_jax.config import HyperPromptConfig

GIN = gin_utils.GIN_DIR
FILES = sorted(os.path.relpath(p, GIN) for p in glob.glob(os.path.join(GIN, '**', '*.gin'),
                                                          recursive=True)
               if not os.path.relpath(p, GIN).startswith('t5x'))
MACROS = ["MODEL_DIR = '/tmp/x'", "MIXTURE_OR_TASK_NAME = 'hyperprompt_demo'",
          "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}", 'TRAIN_STEPS = 1',
          'BATCH_SIZE = 2', "INITIAL_CHECKPOINT_PATH = '/tmp/ckpt'", "INFER_INPUT = '/tmp/in'"]
DIMENSIONS = {'emb_dim', 'num_heads', 'num_encoder_layers', 'num_decoder_layers', 'head_dim',
              'mlp_dim'}


@gin.configurable
def _built(config=gin.REQUIRED):
  return config


def _parse(files):
  """Parses `files` after a prelude (a vocabulary for size-only files), then fills the
  macros the files left at %gin.REQUIRED, and builds the HyperPromptConfig through gin."""
  gin.clear_config()
  gin.add_config_file_search_path(GIN)
  gin.parse_config(['from __gin__ import dynamic_registration',
                    'from hyperprompt_jax import network', 'import tests.test_gin_configs',
                    'network.HyperPromptConfig.vocab_size = 32128',
                    'tests.test_gin_configs._built.config = @network.HyperPromptConfig()'])
  gin.parse_config_files_and_bindings([os.path.join(GIN, f) for f in files], [],
                                     finalize_config=False)
  for binding in MACROS:
    name = binding.split('=')[0].strip()
    try:
      required = repr(gin.query_parameter(f'%{name}')) == '%gin.REQUIRED'
    except ValueError:
      required = False
    if required:
      gin.parse_config(binding)
  gin_utils.check_required_macros()
  return _built()


@pytest.mark.parametrize('name', FILES)
def test_gin_file_parses_and_builds_a_config(name):
  config = _parse([name])
  assert isinstance(config, HyperPromptConfig)
  gin.clear_config()


@pytest.mark.parametrize('size', ['small', 'base', 'large', 'xl', 'xxl'])
def test_size_files_hold_dimensions_only_and_models_are_t5_1_1(size):
  with open(os.path.join(GIN, 'models', 'sizes', f'{size}.gin')) as f:
    bound = {line.split('=')[0].strip().split('.')[-1] for line in f
             if line.startswith('network.HyperPromptConfig.')}
  assert bound == DIMENSIONS
  config = _parse([f'models/{size}.gin', 'variants/global.gin'])
  gin.clear_config()
  expected = param_report.t511_config(size, variant='global', dtype='bfloat16',
                                      float32_attention_logits=True)
  assert config == expected


def test_stacking_a_variant_after_the_demo_switches_it():
  assert _parse(['runs/demo.gin']).variant == 'global'
  assert _parse(['runs/demo.gin', 'variants/mtl.gin']).variant == 'mtl'
  gin.clear_config()


def test_a_missing_required_macro_is_named():
  gin.clear_config()
  gin.add_config_file_search_path(GIN)
  gin.parse_config_files_and_bindings([os.path.join(GIN, 'runs/finetune.gin')], [],
                                     finalize_config=False)
  with pytest.raises(gin_utils.ConfigError, match='BATCH_SIZE'):
    gin_utils.check_required_macros()
  gin.clear_config()


@gin.configurable
def _value(value=gin.REQUIRED):
  return value


def test_freeze_backbone_binds_the_conditioning_regex():
  from hyperprompt_jax import trainer  # pylint: disable=g-import-not-at-top
  _parse(['runs/demo.gin', 'options/freeze_backbone.gin'])
  ref = repr(gin.query_parameter('hyperprompt_jax.training.train.trainable_regex'))
  gin.parse_config(f'tests.test_gin_configs._value.value = {ref}')
  assert _value() == trainer.CONDITIONING_PARAMS_REGEX
  gin.clear_config()
