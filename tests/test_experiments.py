"""The experiments runner: selection, the summary statistics, and a 2-configuration, 1-seed,
few-step smoke run (subprocesses, as a user runs it) that writes the table, JSON and plot and
does not run a finished run again."""

import json
import os

import numpy as np
import pytest

from hyperprompt_jax import experiments


def test_selection_puts_what_an_experiment_starts_from_first_and_runs_aliases_once():
  chosen = experiments.select(['tuning'])
  assert [e.name for e in chosen][0] == 'mtl'
  assert all(e.init_from == 'mtl' for e in chosen[1:])
  names = [e.name for e in experiments.select(['placement'])]
  assert names[0] == 'global' and 'global_both' in names  # global_both reads global's runs
  with pytest.raises(ValueError, match="Unknown group 'ablation'"):
    experiments.select(['ablation'])
  with pytest.raises(ValueError, match="Unknown experiment 'glob'"):
    experiments.select(names=['glob'])
  # every group of the paper: variants, prompt lengths, placement, tuning
  assert set(experiments.GROUPS) == {'variants', 'prompt_length', 'placement', 'optimizer',
                                     'tuning'}
  lengths = [e for e in experiments.EXPERIMENTS if e.group == 'prompt_length']
  assert [e.label for e in lengths] == [f'global, l = {n}' for n in (4, 8, 16, 32)]


def test_summary_is_mean_and_sample_std_over_seeds():
  runs = {0: {'a': 1.0, 'demo score': 10.0}, 1: {'a': 3.0, 'demo score': 20.0}}
  summary = experiments.summarise(runs)
  assert summary['n'] == 2 and summary['mean'] == {'a': 2.0, 'demo score': 15.0}
  assert summary['std']['demo score'] == pytest.approx(np.std([10.0, 20.0], ddof=1))
  assert experiments.summarise({0: {'a': 5.0}})['std'] == {'a': 0.0}


def test_two_configurations_one_seed_smoke(tmp_path, monkeypatch):
  out = str(tmp_path)
  args = ['--output_dir', out, '--seeds=1', '--experiments=mtl,global_from_mtl',
          '--train_steps=2', '--gin_bindings=train.train.eval_max_examples = 2']
  assert experiments.main(args) == 0
  with open(os.path.join(out, 'results.json'), encoding='utf-8') as f:
    results = json.load(f)
  rows = {r['name']: r for r in results['experiments']}
  assert set(rows) == {'mtl', 'global_from_mtl'} and results['train_steps'] == 2
  for row in rows.values():
    assert row['n'] == 1 and set(row['mean']) == {
        'sentiment', 'topic', 'rating', 'extract', 'paraphrase', 'demo score'}
    assert 0.0 <= row['mean']['demo score'] <= 100.0
  # global_from_mtl started from mtl's last checkpoint and stopped 2 steps later
  assert experiments.final_record(experiments.run_dir(out, 'global_from_mtl', 0), 4)
  with open(os.path.join(out, 'results.md'), encoding='utf-8') as f:
    table = f.read()
  assert '| T5, no task conditioning | 1 |' in table
  assert '| global from mtl, all parameters tuned | 1 |' in table
  if os.path.exists(os.path.join(out, 'results.png')):  # the plots extra
    with open(os.path.join(out, 'results.png'), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  # finished runs are not run again
  monkeypatch.setattr(experiments.subprocess, 'call',
                      lambda *a, **k: pytest.fail('a finished run was started again'))
  assert experiments.main(args) == 0
