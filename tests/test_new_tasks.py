"""Adding tasks to a trained model: task tables grow from a checkpoint with fewer tasks (old
rows exact, new rows initialised) and `new_tasks_only` trains only the new rows."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from hyperprompt_jax import checkpoints, models, trainer
from hyperprompt_jax.network import Transformer
from tests.helpers import init_params, random_tokens, shift_right, tiny_config


def _flat(tree):
  return {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _save(params, directory):
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory, {'params': params})


@pytest.mark.parametrize('variant', ['global', 'sep', 'adapter', 'hyperformer', 'prompt_tuning'])
def test_task_tables_grow_from_a_checkpoint_with_fewer_tasks(variant, tmp_path):
  old = init_params(tiny_config(variant, num_tasks=3), seed=1)
  _save(old, str(tmp_path / 'checkpoint_7' / 'default'))
  cfg = tiny_config(variant, num_tasks=5)
  initial = init_params(cfg, seed=2)
  axes = checkpoints.task_axes(models.init_variables_abstract(Transformer(cfg)))
  assert axes and set(axes.values()) <= {0, 1}  # 'sep': [layers, tasks, ...]
  merged, report = checkpoints.load_initial_params(
      str(tmp_path / 'checkpoint_7'), initial, jax.tree.map(lambda x: x.sharding, initial), axes)
  assert report['step'] == 7 and sorted(report['grown']) == sorted(axes)
  assert all(v == [3, 5] for v in report['grown'].values())
  got, before, fresh = _flat(merged), _flat(old), _flat(initial)
  for name, value in got.items():
    if name in axes:
      rows = lambda x, r: np.take(x, r, axis=axes[name])  # pylint: disable=cell-var-from-loop
      np.testing.assert_array_equal(rows(value, range(3)), before[name])  # old rows: exact
      np.testing.assert_array_equal(rows(value, range(3, 5)), rows(fresh[name], range(3, 5)))
    else:
      np.testing.assert_array_equal(value, before[name])
  with pytest.raises(checkpoints.CheckpointError, match='other shapes'):  # shrinking is no grow
    checkpoints.load_initial_params(
        str(tmp_path / 'checkpoint_7'), init_params(tiny_config(variant, num_tasks=2)),
        jax.tree.map(lambda x: x.sharding, init_params(tiny_config(variant, num_tasks=2))),
        checkpoints.task_axes(models.init_variables_abstract(
            Transformer(tiny_config(variant, num_tasks=2)))))


@pytest.mark.parametrize('variant', ['global', 'adapter'])
def test_new_tasks_only_changes_only_the_new_rows(variant):
  cfg = tiny_config(variant, num_tasks=5)
  model = Transformer(cfg)
  params = init_params(cfg)
  axes = checkpoints.task_axes(models.init_variables_abstract(model))
  optimizer = trainer.make_optimizer(1e-2, params, first_new_task=3, task_axes=axes)
  step = jax.jit(trainer.make_train_step(model, optimizer, cfg.num_tasks))
  targets = random_tokens(1, (4, 5))
  batch = {'encoder_input_tokens': random_tokens(0, (4, 7)), 'decoder_target_tokens': targets,
           'decoder_input_tokens': shift_right(targets),
           'decoder_loss_weights': np.ones_like(targets),
           'task_ids': np.array([0, 3, 4, 2], np.int32)}  # old and new tasks in the batch
  state = {'step': jnp.asarray(0, jnp.int32), 'params': params,
           'opt_state': optimizer.init(params)}
  new, _ = step(state, batch)
  before, after = _flat(params), _flat(new['params'])
  for name, value in after.items():
    if name in axes:
      np.testing.assert_array_equal(value[:3], before[name][:3])
      assert not np.array_equal(value[3:], before[name][3:]), name
    else:
      np.testing.assert_array_equal(value, before[name])


def _rows_of(table, vectors):
  """For each vector [n, d], the index of the equal row of table [vocab, d] (or -1)."""
  eq = (vectors[:, None, :] == table[None, :, :]).all(-1)  # [n, vocab]
  return np.where(eq.any(1), eq.argmax(1), -1)


def test_input_prompts_start_as_token_embeddings_of_the_checkpoint():
  """Lester et al.'s initialisation: every prompt vector is a token embedding (ids 3 ..
  vocab-1); after an INITIAL_CHECKPOINT_PATH the prompts it did not hold are drawn from its
  embeddings, and the old tasks' rows of a grown table are kept."""
  from hyperprompt_jax import train  # pylint: disable=import-outside-toplevel
  cfg = tiny_config('prompt_tuning', num_tasks=4)
  params = init_params(cfg, perturb=False)
  table = np.asarray(params['token_embedder']['embedding'])
  prompts = np.asarray(params['input_prompts']['prompts'])  # [T, l_in, d]
  ids = _rows_of(table, prompts.reshape(-1, cfg.emb_dim))
  assert (ids >= 3).all() and len(set(ids.tolist())) > 3
  loaded = {**params, 'token_embedder': {'embedding': params['token_embedder']['embedding'] + 1.0}}
  new_table = table + 1.0
  report = {'grown': {'input_prompts/prompts': [2, 4]}, 'initialised': [],
            'loaded': ['token_embedder/embedding', 'input_prompts/prompts']}
  got = np.asarray(train._vocab_prompts_from_checkpoint(cfg, loaded, report, seed=0)
                   ['input_prompts']['prompts'])
  np.testing.assert_array_equal(got[:2], prompts[:2])  # old tasks' rows as loaded
  assert (_rows_of(new_table, got[2:].reshape(-1, cfg.emb_dim)) >= 3).all()
  report = {'grown': {}, 'initialised': ['input_prompts/prompts'],
            'loaded': ['token_embedder/embedding']}
  got = np.asarray(train._vocab_prompts_from_checkpoint(cfg, loaded, report, seed=0)
                   ['input_prompts']['prompts'])
  assert (_rows_of(new_table, got.reshape(-1, cfg.emb_dim)) >= 3).all()
  normal = tiny_config('prompt_tuning', input_prompt_init='normal')
  assert train._vocab_prompts_from_checkpoint(normal, loaded, report, 0) is loaded
