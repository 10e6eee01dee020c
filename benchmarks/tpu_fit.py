"""Does a model fit a TPU slice? Compiles the trainer's own train step (loss, gradients,
Adafactor update, with the run's partitioning, microbatches and remat) for a TPU topology
without a TPU, and prints XLA's per-chip memory and FLOPs.

    pip install -e ".[tpu]" -c constraints.txt        # libtpu: deviceless TPU compiles
    python benchmarks/tpu_fit.py --gin_file=models/xxl.gin --gin_file=variants/global.gin \
        --gin_file=options/large_scale.gin --topology=v4:4x4x4 --gin.NUM_PARTITIONS=8 \
        --gin.BATCH_SIZE=128 "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 64}"

Any gin file or binding of the train command may be stacked (runs/finetune.gin is read
first; macros it leaves required get placeholders: nothing is read or written). The last
line is `per-chip HBM: <total> GiB of <chip> GiB` (`over <needed> GiB ... (does not fit)`,
exit code 1, when XLA cannot fit the step). Topologies: v4:AxBxC and v5p:AxBxC
(megacore: one device per chip), v5e:AxB, v6e:AxB. `--mode=decode --eval_batch_size=N`
compiles the eval command's partitioned greedy decoding instead of the train step.
"""

import argparse
import dataclasses
import inspect
import os
import re
import resource
import sys
import time

import gin
import jax
import numpy as np

from hyperprompt_jax import gin_utils, models, partitioning, runtime, train, trainer
from hyperprompt_jax.network import Transformer
from hyperprompt_tasks.feature_converter import TaskIdEncDecFeatureConverter

GIB = 1024 ** 3
# HBM per chip by jax's device_kind (Cloud TPU documentation).
CHIP_HBM_GIB = {'TPU v4': 32, 'TPU v5 lite': 16, 'TPU v5': 95, 'TPU v6 lite': 32}
# Placeholders for the run macros that do not change the compiled step.
PLACEHOLDERS = {'MODEL_DIR': "'/nonexistent'", 'MIXTURE_OR_TASK_NAME': "'tpu_fit'",
                'TRAIN_STEPS': '1', 'INITIAL_CHECKPOINT_PATH': 'None', 'BENCHMARK': "'glue'",
                'BATCH_SIZE': '128', 'TASK_FEATURE_LENGTHS': "{'inputs': 512, 'targets': 64}"}


def topology_devices(topology: str, chip_config: str = ''):
  """The devices of a TPU topology, from libtpu, on any machine."""
  # Compiling touches no chip: let several compiles (and a run on a TPU VM) share libtpu.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  family = topology.split(':')[0]
  chip_config = chip_config or ('megacore' if family in ('v4', 'v5p') else 'default')
  try:
    desc = topologies.get_topology_desc(platform='tpu', topology_name=topology,
                                        chip_config_name=chip_config)
  except Exception as e:  # pylint: disable=broad-except
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise SystemExit(f'error: no TPU topology {topology!r} ({text}): install libtpu with '
                     'pip install -e ".[tpu]" and name a topology like v4:2x2x1.') from None
  return desc.devices


def run_bindings():
  """The train command's bindings after the gin files, placeholders where required."""
  for name, value in PLACEHOLDERS.items():
    try:
      required = repr(gin.query_parameter(f'%{name}')) == '%gin.REQUIRED'
    except ValueError:
      required = False
    if required:
      gin.parse_config(f'{name} = {value}')
  defaults = {k: p.default for k, p in inspect.signature(train.train).parameters.items()}
  return {**defaults, **gin.get_bindings(train.train)}


def abstract_batch(part, batch_size, lengths, pack, max_segments):
  """ShapeDtypeStructs of a feature-converted training batch, sharded over 'data'."""
  converter = TaskIdEncDecFeatureConverter(pack=pack, max_segments=max_segments)
  batch = {}
  for key, length in converter.get_model_feature_lengths(lengths).items():
    shape = (batch_size,) if key == 'task_ids' and not pack else (batch_size, length)
    batch[key] = jax.ShapeDtypeStruct(shape, np.int32, sharding=part.batch_sharding(len(shape)))
  return batch


def compile_step(run, devices):
  """Compiles the run's train step for `devices`: (compiled, seconds)."""
  config = run['config']
  if config.embedding_lookup == 'auto':  # the TPU's choice, though compiled on a CPU host
    config = dataclasses.replace(config, embedding_lookup='one_hot')
  model = Transformer(config)
  part = partitioning.Partitioner(run['num_partitions'], run['parameter_partitioning_dims'],
                                  run['activation_partitioning_dims'], devices=devices)
  abstract = models.init_variables_abstract(model)
  param_shardings = part.param_shardings(abstract)
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract['params'], param_shardings)
  optimizer = trainer.make_optimizer(run['learning_rate'], params, run['trainable_regex'],
                                     run['frozen_regex'])
  step, state_shardings = train.jit_train_step(
      model, optimizer, part, params, param_shardings, seed=run['seed'], z_loss=run['z_loss'],
      num_microbatches=run['num_microbatches'], donate_state=run['donate_state'])
  state = {'step': jax.ShapeDtypeStruct((), np.int32, sharding=part.replicated), 'params': params,
           'opt_state': jax.tree.map(
               lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
               jax.eval_shape(optimizer.init, params), state_shardings['opt_state'])}
  batch = abstract_batch(part, run['batch_size'], run['task_feature_lengths'], run['pack'],
                         run['max_segments'])
  start = time.perf_counter()
  with part.context():
    compiled = step.lower(state, batch).compile()
  return compiled, time.perf_counter() - start


def compile_decode(run, devices, batch_size):
  """Compiles the eval command's greedy decoding (the cache, TASK_FEATURE_LENGTHS['targets']
  steps) for `devices`, laid out as the eval command lays it out (runtime.build with
  NUM_PARTITIONS, its default 1-D parameter partitioning; the batch split over 'data'):
  (compiled, seconds)."""
  config = run['config']
  if config.embedding_lookup == 'auto':
    config = dataclasses.replace(config, embedding_lookup='one_hot')
  rt = runtime.build(config, run['num_partitions'], devices=devices)
  part = rt.partitioner
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        rt.abstract['params'], rt.param_shardings)
  lengths = run['task_feature_lengths']
  tokens = jax.ShapeDtypeStruct((batch_size, lengths['inputs']), np.int32,
                                sharding=part.batch_sharding(2))
  ids = jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=part.batch_sharding(1))
  start = time.perf_counter()
  with part.context():
    compiled = models._compiled_greedy(  # pylint: disable=protected-access
        config, lengths['targets'], 1).lower(params, tokens, ids).compile()
  return compiled, time.perf_counter() - start


def peak_host_gb() -> float:
  """This process's peak resident memory so far (GB): for a deviceless compile, the
  compiler's (the model itself is never materialised here)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def report(compiled, seconds, devices, run, mode='train', eval_batch_size=None) -> float:
  """Prints the figures; returns the total per-chip HBM in GiB."""
  mem = compiled.memory_analysis()
  args, temp = mem.argument_size_in_bytes, mem.temp_size_in_bytes
  out = mem.output_size_in_bytes - mem.alias_size_in_bytes  # donated state is reused
  total = args + out + temp + mem.generated_code_size_in_bytes
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  kind = devices[0].device_kind
  chip = CHIP_HBM_GIB.get(kind)
  cfg = run['config']
  if mode == 'decode':
    print(f'{kind} x{len(devices)} chips; greedy decoding, {cfg.variant} emb {cfg.emb_dim}, '
          f'{cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers; eval batch '
          f'{eval_batch_size}, lengths {dict(run["task_feature_lengths"])}; '
          f'NUM_PARTITIONS={run["num_partitions"]}, parameter_partitioning_dims=1, '
          f'scan_layers={cfg.scan_layers}')
  else:
    print(f'{kind} x{len(devices)} chips; {cfg.variant} emb {cfg.emb_dim}, '
          f'{cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers; batch '
          f'{run["batch_size"]}, lengths {dict(run["task_feature_lengths"])}; '
          f'NUM_PARTITIONS={run["num_partitions"]}, '
          f'parameter_partitioning_dims={run["parameter_partitioning_dims"]}, '
          f'microbatches={run["num_microbatches"]}, remat={cfg.layer_remat}, '
          f'scan_layers={cfg.scan_layers}')
  print(f'compile: {seconds:.1f} s, peak host memory {peak_host_gb():.1f} GB; '
        f'XLA FLOPs per chip per step: {float(cost.get("flops", 0)):.3e}')
  print(f'per chip: arguments {args / GIB:.3f} GiB, outputs (not aliased) {out / GIB:.3f} GiB, '
        f'temporaries {temp / GIB:.3f} GiB')
  chip_text = f'{chip} GiB' if chip else f'? GiB (unknown chip {kind})'
  print(f'per-chip HBM: {total / GIB:.3f} GiB of {chip_text}')
  return total / GIB


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--topology', required=True, help='e.g. v4:2x2x1, v4:4x4x4, v5e:4x4')
  parser.add_argument('--mode', choices=('train', 'decode'), default='train',
                      help="train: the train step; decode: the eval command's greedy decoding")
  parser.add_argument('--eval_batch_size', type=int, default=128,
                      help='--mode=decode: rows decoded at once (eval.evaluate.batch_size)')
  parser.add_argument('--chip_config', default='',
                      help="libtpu chip config (default: 'megacore' on v4/v5p, else 'default')")
  ours, rest = parser.parse_known_args(argv)
  try:
    args, files, bindings = gin_utils.parse_flags(rest, 'tpu_fit gin flags')
    gin_utils.parse_config(['runs/finetune.gin'] + files, bindings, args.gin_search_paths)
    run = run_bindings()
  except gin_utils.ConfigError as e:
    sys.exit(f'error: {e}')
  devices = topology_devices(ours.topology, ours.chip_config)
  try:
    if ours.mode == 'decode':
      compiled, seconds = compile_decode(run, devices, ours.eval_batch_size)
    else:
      compiled, seconds = compile_step(run, devices)
  except Exception as e:  # pylint: disable=broad-except
    m = re.search(r'RESOURCE_EXHAUSTED: Ran out of memory.*?\(([0-9.]+)G\) exceeds available '
                  r'HBM \(([0-9.]+)G\)', str(e))
    if not m:
      if os.environ.get('HYPERPROMPT_DEBUG'):
        raise
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      sys.exit(f'error: XLA could not compile this step for {ours.topology}: {first[:300]} '
               '(HYPERPROMPT_DEBUG=1 shows the traceback)')
    chip = CHIP_HBM_GIB.get(devices[0].device_kind, '?')
    print(f'{devices[0].device_kind} x{len(devices)} chips: XLA needs {m.group(1)} GiB of '
          f'temporaries per chip, {m.group(2)} GiB are free: add model partitions, remat '
          '(options/large_scale.gin) or chips.')
    print(f'per-chip HBM: over {m.group(1)} GiB of {chip} GiB (does not fit)')
    sys.exit(1)
  report(compiled, seconds, devices, run, ours.mode, ours.eval_batch_size)


if __name__ == '__main__':
  main()
