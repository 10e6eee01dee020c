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
