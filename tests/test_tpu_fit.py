"""benchmarks/tpu_fit.py: a deviceless compile of the trainer's step for a TPU topology
(libtpu; skipped where it is not installed)."""

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from tests.test_training import REPO, _env

pytestmark = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                reason='libtpu not installed (pip install -e ".[tpu]")')

DEMO = ['--gin_file=models/demo.gin', '--topology=v4:2x2x1', '--gin.BATCH_SIZE=16',
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}"]

# Per-chip figures for 1 and 4 model partitions of the same demo step on 4 v4 chips.
_COMPARE = '''
import json, sys
sys.path.insert(0, 'benchmarks')
import gin
import tpu_fit
from hyperprompt_jax import gin_utils
out = {}
for np_ in (1, 4):
  gin.clear_config()
  gin_utils.parse_config(['runs/finetune.gin', 'models/demo.gin'],
                         [f'NUM_PARTITIONS = {np_}', 'BATCH_SIZE = 16',
                          "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 8}"])
  run = tpu_fit.run_bindings()
  devices = tpu_fit.topology_devices('v4:2x2x1')
  compiled, _ = tpu_fit.compile_step(run, devices)
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  out[np_] = {'args': mem.argument_size_in_bytes, 'flops': float(cost['flops']),
              'alias': mem.alias_size_in_bytes,
              'kind': devices[0].device_kind, 'n': len(devices)}
print('RESULT ' + json.dumps(out))
'''


def test_command_prints_per_chip_hbm_of_a_v4_chip():
  out = subprocess.run([sys.executable, 'benchmarks/tpu_fit.py', *DEMO,
                        '--gin.NUM_PARTITIONS=2'], env=_env(1), cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert lines[0].startswith('TPU v4 x4 chips; global emb 64, 2+2 layers; batch 16')
  assert 'NUM_PARTITIONS=2' in lines[0]
  m = re.fullmatch(r'per-chip HBM: ([0-9.]+) GiB of 32 GiB', lines[-1])
  assert m and 0 < float(m.group(1)) < 1, lines[-1]


def test_model_partitions_split_the_parameters_and_the_flops():
  out = subprocess.run([sys.executable, '-c', _COMPARE], env=_env(1), cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  res = json.loads(out.stdout.split('RESULT ', 1)[1])
  one, four = res['1'], res['4']
  assert one['kind'] == 'TPU v4' and one['n'] == 4
  # On TPU the step overwrites the donated state (not on the CPU: test_trainer.py).
  assert one['alias'] > 0.5 * one['args'] and four['alias'] > 0.5 * four['args']
  # Data-parallel only: every chip holds all parameters and optimizer state; with four
  # model partitions the big ones (embedding, logits, attention, MLP) are split four ways.
  assert four['args'] < 0.6 * one['args']  # (the hypernetworks and the batch are replicated)
  # Each chip does a quarter of the batch's model math either way (within the replicated
  # parts and the collectives' bookkeeping).
  assert 0.5 < four['flops'] / one['flops'] < 2.0


def test_unknown_topology_is_one_line():
  out = subprocess.run([sys.executable, 'benchmarks/tpu_fit.py', '--gin_file=models/demo.gin',
                        '--topology=v9:1x1'], env=_env(1), cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 1
  assert re.search(r"error: no TPU topology 'v9:1x1' .*: install libtpu", out.stderr)


def test_microbatches_compile_when_the_batch_is_sharded_eight_ways():
  """options/large_scale.gin (remat, 4 microbatches, 2-D) on 64 chips with 8 model
  partitions: a contiguous microbatch split made XLA reject this compile ('Slice dim size 8
  greater than dynamic slice dimension: 1'), as it did XXL's."""
  out = subprocess.run([sys.executable, 'benchmarks/tpu_fit.py', '--gin_file=models/demo.gin',
                        '--gin_file=options/large_scale.gin', '--topology=v4:4x4x4',
                        '--gin.NUM_PARTITIONS=8', '--gin.BATCH_SIZE=128',
                        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
                        '--gin.network.HyperPromptConfig.num_heads=8',
                        '--gin.network.HyperPromptConfig.head_dim=8'],
                       env=_env(1), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'microbatches=4, remat=full, scan_layers=True' in out.stdout
  assert re.fullmatch(r'per-chip HBM: [0-9.]+ GiB of 32 GiB', out.stdout.strip().splitlines()[-1])


def test_decode_mode_compiles_the_partitioned_greedy_decoding():
  """--mode=decode: the eval command's decoding on 4 chips, 2 model partitions, each data
  shard decoding 8 of the 16 rows."""
  out = subprocess.run([sys.executable, 'benchmarks/tpu_fit.py', *DEMO, '--mode=decode',
                        '--eval_batch_size=16', '--gin.NUM_PARTITIONS=2',
                        '--gin.network.HyperPromptConfig.scan_layers=True'],
                       env=_env(1), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert lines[0].startswith('TPU v4 x4 chips; greedy decoding, global emb 64, 2+2 layers; '
                             'eval batch 16'), lines[0]
  assert 'NUM_PARTITIONS=2' in lines[0] and 'scan_layers=True' in lines[0]
  m = re.fullmatch(r'per-chip HBM: ([0-9.]+) GiB of 32 GiB', lines[-1])
  assert m and 0 < float(m.group(1)) < 1, lines[-1]
