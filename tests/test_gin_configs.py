"""Every gin file that needs no t5x (flaxformer's gin test): parsed, its required macros
filled, finalized, the model built at a tiny size, initialised and applied once. Size files
hold T5.1.1's published dimensions and nothing else; stacking order is what the headers say.
t5x's files are covered in test_t5x.py."""

import glob
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperprompt_tasks
from hyperprompt_jax import gin_utils, param_report
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import CONDITIONING_PARAMS_REGEX, Transformer

GIN = gin_utils.GIN_DIR
FILES = sorted(os.path.relpath(p, GIN) for p in glob.glob(os.path.join(GIN, '**', '*.gin'),
                                                          recursive=True)
               if not os.path.relpath(p, GIN).startswith('t5x'))
MACROS = ["MODEL_DIR = '/tmp/x'", "MIXTURE_OR_TASK_NAME = 'hyperprompt_demo'",
          "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}", 'TRAIN_STEPS = 1',
          'BATCH_SIZE = 2', "INITIAL_CHECKPOINT_PATH = '/tmp/ckpt'", "INFER_INPUT = '/tmp/in'",
          "BENCHMARK = 'glue'"]
TINY = {'emb_dim': 8, 'num_heads': 2, 'head_dim': 4, 'mlp_dim': 16, 'num_encoder_layers': 1,
        'num_decoder_layers': 1}
# Published T5.1.1 dimensions (the public t5x checkpoints), written out independently.
T5_1_1 = {
    'small': dict(emb_dim=512, num_heads=6, num_encoder_layers=8, num_decoder_layers=8,
                  head_dim=64, mlp_dim=1024),
    'base': dict(emb_dim=768, num_heads=12, num_encoder_layers=12, num_decoder_layers=12,
                 head_dim=64, mlp_dim=2048),
    'large': dict(emb_dim=1024, num_heads=16, num_encoder_layers=24, num_decoder_layers=24,
                  head_dim=64, mlp_dim=2816),
    'xl': dict(emb_dim=2048, num_heads=32, num_encoder_layers=24, num_decoder_layers=24,
               head_dim=64, mlp_dim=5120),
    'xxl': dict(emb_dim=4096, num_heads=64, num_encoder_layers=24, num_decoder_layers=24,
                head_dim=64, mlp_dim=10240),
}


@gin.configurable
def _built(config=gin.REQUIRED):
  return config


@gin.configurable
def _value(value=gin.REQUIRED):
  return value


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()  # also after a failure: no state leaks into the next test


def _parse(files, *bindings):
  """Parses `files` after a prelude that routes the model config to `_built`, fills the
  macros the files left at %gin.REQUIRED, then `bindings`."""
  gin.add_config_file_search_path(GIN)
  gin.parse_config(['from __gin__ import dynamic_registration',
                    'from hyperprompt_jax import network', 'import tests.test_gin_configs',
                    'network.HyperPromptConfig.vocab_size = 32128',
                    'tests.test_gin_configs._built.config = @network.HyperPromptConfig()'])
  with gin_utils.quiet_include_search():
    gin.parse_config_files_and_bindings([os.path.join(GIN, f) for f in files], list(bindings),
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


@pytest.mark.parametrize('name', FILES)
def test_gin_file_finalizes_builds_the_model_and_runs_it(name):
  _parse([name], *[f'network.HyperPromptConfig.{k} = {v}' for k, v in TINY.items()])
  gin.finalize()
  config = _built()
  assert isinstance(config, HyperPromptConfig)
  for key, value in TINY.items():
    assert getattr(config, key) == value, key
  model = Transformer(config)
  tokens = jnp.asarray(np.random.RandomState(0).randint(2, 100, (2, 5)), jnp.int32)
  ids = jnp.zeros((2,), jnp.int32) if config.is_conditioned else None
  params = model.init(jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False,
                      task_ids=ids)['params']
  logits = model.apply({'params': params}, tokens, tokens, tokens, enable_dropout=False,
                       task_ids=ids)
  assert logits.shape == (2, 5, config.vocab_size)
  assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize('size', sorted(T5_1_1))
def test_size_files_hold_t5_1_1_dimensions_only(size):
  with open(os.path.join(GIN, 'models', 'sizes', f'{size}.gin')) as f:
    bound = {line.split('=')[0].strip().split('.')[-1] for line in f
             if line.startswith('network.HyperPromptConfig.')}
  assert bound == set(T5_1_1[size])
  config = param_report.size_config(size)
  assert {k: getattr(config, k) for k in T5_1_1[size]} == T5_1_1[size]
  assert (config.vocab_size, config.mlp_activations, config.dtype) == (
      32128, ('gelu', 'linear'), 'bfloat16')


def test_stacking_a_variant_after_the_demo_switches_only_the_variant():
  _parse(['runs/demo.gin'])
  demo = _built()
  assert (demo.variant, demo.prompt_length) == ('global', 8)
  for variant in ('mtl', 'global', 'share'):
    gin.clear_config()
    _parse(['runs/demo.gin', f'variants/{variant}.gin'])
    stacked = _built()
    assert stacked.variant == variant
    assert stacked.prompt_length == demo.prompt_length == 8  # sizes untouched


@pytest.mark.parametrize('benchmark,rows', [('glue', 8), ('super_glue', 16),
                                            ('glue_super_glue', 16)])
@pytest.mark.parametrize('job', ['finetune', 'eval'])
def test_benchmark_run_files_pick_their_mixture_and_task_table(benchmark, rows, job):
  """The mixture is hyperprompt_<BENCHMARK> and the model has a row for every task id it
  emits (SuperGLUE's ids follow GLUE's)."""
  _parse(['models/small.gin', f'runs/{job}_benchmark.gin'], f"BENCHMARK = '{benchmark}'")
  gin.parse_config(['import tests.test_gin_configs',
                    'tests.test_gin_configs._value.value = %MIXTURE_OR_TASK_NAME'])
  mixture = _value()
  assert mixture == f'hyperprompt_{benchmark}'
  gin.finalize()
  assert _built().num_tasks == rows == max(hyperprompt_tasks.task_ids_of(mixture)) + 1


def test_a_missing_required_macro_is_named():
  gin.add_config_file_search_path(GIN)
  gin.parse_config_files_and_bindings([os.path.join(GIN, 'runs/finetune.gin')], [],
                                      finalize_config=False)
  with pytest.raises(gin_utils.ConfigError, match='BATCH_SIZE'):
    gin_utils.check_required_macros()


def test_freeze_backbone_binds_the_conditioning_regex():
  _parse(['runs/demo.gin', 'options/freeze_backbone.gin'])
  ref = repr(gin.query_parameter('hyperprompt_jax.train.train.trainable_regex'))
  gin.parse_config(f'tests.test_gin_configs._value.value = {ref}')
  assert _value() == CONDITIONING_PARAMS_REGEX


def test_prompt_tuning_frozen_is_lesters_setting_on_any_run():
  _parse(['runs/demo.gin', 'options/prompt_tuning_frozen.gin'])
  query = lambda name: gin.query_parameter(f'hyperprompt_jax.train.train.{name}')
  assert (query('pack'), query('learning_rate'), query('adafactor_parameter_scale'),
          query('weight_decay_rate')) == (False, 0.3, False, 1e-5)
  ref = repr(query('trainable_regex'))
  gin.parse_config(f'tests.test_gin_configs._value.value = {ref}')
  assert _value() == CONDITIONING_PARAMS_REGEX
  gin.finalize()
  config = _built()
  assert (config.variant, config.input_prompt_length, config.input_prompt_init) == (
      'prompt_tuning', 100, 'vocab')
