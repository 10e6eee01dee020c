"""What every command builds before it touches a checkpoint: the mesh and Partitioner of the
run's partitioning bindings, the model, its abstract variables and the parameters' shardings;
and the restore of a run's parameters straight into those shardings. train, eval, infer and
analysis share it, so a model that trains on a pod slice is evaluated, used and analysed on
the same slice: no command materialises a whole model on one device or one host.
"""

import dataclasses
from typing import Any, Optional, Tuple

from hyperprompt_jax import checkpoints, models, partitioning
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import Transformer


@dataclasses.dataclass
class Runtime:
  """The model on a mesh: `partitioner` (mesh, logical rules), `abstract` (the variables'
  shapes and logical axes) and `param_shardings` (a NamedSharding per parameter)."""
  config: HyperPromptConfig
  partitioner: partitioning.Partitioner
  model: Transformer
  abstract: Any
  param_shardings: Any

  def init_params(self, seed: int):
    """Freshly initialised parameters, each created in its sharding."""
    with self.partitioner.context():
      return models.init_params(self.model, seed, self.param_shardings)

  def restore_params(self, model_dir: str, step: Optional[int] = None) -> Tuple[Any, int]:
    """(params, step) of a run's `step` (default: its latest): every array read straight
    into its sharding, each process reading only the slices its devices hold."""
    return checkpoints.restore_params(self.model, model_dir, step, self.param_shardings)


def build(config: HyperPromptConfig, num_partitions: int = 1,
          parameter_partitioning_dims: int = 1, activation_partitioning_dims: int = 1,
          devices=None) -> Runtime:
  """The Runtime of `config` on all of jax's devices (or `devices`), NUM_PARTITIONS along
  'model' (t5x's partitioning semantics: see partitioning.logical_axis_rules)."""
  part = partitioning.Partitioner(num_partitions, parameter_partitioning_dims,
                                  activation_partitioning_dims, devices=devices)
  model = Transformer(config)
  abstract = models.init_variables_abstract(model)
  return Runtime(config, part, model, abstract, part.param_shardings(abstract))

