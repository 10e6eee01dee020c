"""The paper's experiments on the offline demo: every variant and the ablations, over seeds,
with a results table (markdown + JSON) and a plot.

    python -m hyperprompt_jax.experiments --output_dir=/tmp/hp_experiments --seeds=3

Each run is the demo (runs/demo.gin, its 3000 steps unless --train_steps) in its own
process, in OUTPUT_DIR/runs/<experiment>/seed_<k> (seed k for parameters, dropout and data
order). A run that finished is not run again and an interrupted one continues from its
checkpoint, so rerunning the same command completes an experiment; the table is rewritten
after every run from what has finished (`n` is the number of seeds behind each mean).

Groups (--groups; --experiments picks single experiments by name):
  variants          every variant of the network (mtl, prompt tuning, adapters,
                    HyperFormer++, HyperPrompt share / sep / global), trained from scratch
  prompt_length     'global' with l = 4, 8 (the demo's), 16, 32
  placement         'global' with hyper-prompts in the encoder only, the decoder only, both
  optimizer         mtl, 'global' and Houlsby adapters with Adafactor's parameter scaling off
  tuning            from each seed's trained 'mtl' checkpoint, 'global' tuning everything vs
                    only the task conditioning (the backbone frozen), and prompt tuning
                    with the backbone frozen (Lester et al.'s setting, the paper's baseline)
Outputs: results.json (every run's task scores and the means and standard deviations),
results.md (one table per group: mean ± std over seeds) and results.png (demo score per
experiment, the `plots` extra).
"""

import argparse
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger('hyperprompt_jax')

DEMO_STEPS = 3000  # runs/demo.gin's TRAIN_STEPS
DEMO_PROMPT_LENGTH = 8  # models/demo.gin's prompt_length
SCORE = 'demo score'


@dataclasses.dataclass(frozen=True)
class Experiment:
  group: str
  name: str
  gin_files: Tuple[str, ...] = ()
  bindings: Tuple[str, ...] = ()  # whole gin bindings
  init_from: Optional[str] = None  # an experiment whose final checkpoint (same seed) starts this
  label: str = ''  # the table's description
  same_as: Optional[str] = None  # the same configuration as this experiment: its runs are read

  @property
  def runs_as(self) -> str:
    return self.same_as or self.name


_UNPACKED = ('train.train.pack = False',)  # input prompts lengthen the encoded sequence
_LENGTH = 'network.HyperPromptConfig.prompt_length = {}'
_UNSCALED = 'train.train.adafactor_parameter_scale = False'
EXPERIMENTS: Tuple[Experiment, ...] = (
    Experiment('variants', 'mtl', ('variants/mtl.gin',), label='T5, no task conditioning'),
    Experiment('variants', 'prompt_tuning', ('variants/prompt_tuning.gin',), _UNPACKED,
               label='Prompt-Tuning (Lester et al.), all parameters tuned'),
    Experiment('variants', 'adapter', ('variants/adapter.gin',),
               label='Houlsby adapters after attention and FFN'),
    Experiment('variants', 'hyperformer', ('variants/hyperformer.gin',), label='HyperFormer++'),
    Experiment('variants', 'share', ('variants/share.gin',), label='HyperPrompt-Share'),
    Experiment('variants', 'sep', ('variants/sep.gin',), label='HyperPrompt-Sep'),
    Experiment('variants', 'global', ('variants/global.gin',), label='HyperPrompt-Global'),
    *(Experiment('prompt_length', f'global_l{n}', ('variants/global.gin',), (_LENGTH.format(n),),
                 label=f'global, l = {n}', same_as='global' if n == DEMO_PROMPT_LENGTH else None)
      for n in (4, 8, 16, 32)),
    Experiment('placement', 'global_encoder', ('variants/global.gin',),
               ('network.HyperPromptConfig.decoder_prompts = False',), label='encoder only'),
    Experiment('placement', 'global_decoder', ('variants/global.gin',),
               ('network.HyperPromptConfig.encoder_prompts = False',), label='decoder only'),
    Experiment('placement', 'global_both', ('variants/global.gin',), label='encoder and decoder',
               same_as='global'),
    # Adafactor scales each update by the parameter's RMS (at least 1e-3), so adapters that
    # start at Houlsby's std 1e-3 barely move; the same three without that scaling (T5's
    # default is on), which also changes how the backbone trains.
    *(Experiment('optimizer', f'{v}_unscaled', (f'variants/{v}.gin',), (_UNSCALED,),
                 label=f'{v}, Adafactor without parameter scaling')
      for v in ('mtl', 'global', 'adapter')),
    Experiment('tuning', 'global_from_mtl', ('variants/global.gin',), init_from='mtl',
               label='global from mtl, all parameters tuned'),
    Experiment('tuning', 'global_from_mtl_frozen', ('variants/global.gin',
                                                    'options/freeze_backbone.gin'),
               init_from='mtl', label='global from mtl, only the conditioning tuned'),
    Experiment('tuning', 'prompt_tuning_from_mtl_frozen', ('options/prompt_tuning_frozen.gin',),
               init_from='mtl', label='Prompt-Tuning from mtl, backbone frozen'),
)
GROUPS = tuple(dict.fromkeys(e.group for e in EXPERIMENTS))


def select(groups: Sequence[str] = (), names: Sequence[str] = ()) -> List[Experiment]:
  """The experiments asked for (all by default), with those they start from ahead of them."""
  known = {e.name: e for e in EXPERIMENTS}
  for g in groups:
    if g not in GROUPS:
      raise ValueError(f'Unknown group {g!r}: choose from {", ".join(GROUPS)}.')
  for n in names:
    if n not in known:
      raise ValueError(f'Unknown experiment {n!r}: choose from {", ".join(known)}.')
  chosen = [e for e in EXPERIMENTS if (not groups and not names) or e.group in groups
            or e.name in names]
  needed = ({e.init_from for e in chosen if e.init_from} | {e.same_as for e in chosen if e.same_as}
            ) - {e.name for e in chosen}
  return [known[n] for n in sorted(needed)] + chosen


def run_dir(output_dir: str, name: str, seed: int) -> str:
  return os.path.join(output_dir, 'runs', name, f'seed_{seed}')


def final_record(model_dir: str, step: int) -> Optional[Dict]:
  """The run's evaluation record at `step`, or None if it has not got there."""
  path = os.path.join(model_dir, 'training_eval', 'metrics.jsonl')
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    records = [json.loads(line) for line in f if line.strip()]
  return next((r for r in reversed(records) if r.get('step') == step), None)


def stop_step(exp: Experiment, train_steps: int) -> int:
  """The absolute step a run stops at: train_steps after the step it starts from."""
  return 2 * train_steps if exp.init_from else train_steps


def command(exp: Experiment, output_dir: str, seed: int, train_steps: int,
            extra: Sequence[str] = ()) -> Tuple[List[str], int]:
  """The train command of one run and the step it stops at."""
  stop = stop_step(exp, train_steps)
  args = [sys.executable, '-m', 'hyperprompt_jax.train', '--gin_file=runs/demo.gin']
  args += [f'--gin_file={f}' for f in exp.gin_files]
  if exp.init_from:
    args.append('--gin.INITIAL_CHECKPOINT_PATH=' + os.path.join(  # stopped at train_steps
        run_dir(output_dir, exp.init_from, seed), f'checkpoint_{train_steps}'))
  args += [f'--gin.MODEL_DIR={run_dir(output_dir, exp.name, seed)}', f'--gin.TRAIN_STEPS={stop}']
  bindings = (f'train.train.seed = {seed}', f'train.train.data_seed = {seed}',
              'train.train.log_every_steps = 100', 'train.train.report_every_seconds = 60.0',
              *exp.bindings)
  args += [f'--gin_bindings={b}' for b in bindings] + list(extra)
  return args, stop


def task_scores(record: Dict) -> Dict[str, float]:
  """{task short name: score (mean of its metrics)} and the demo score of an eval record."""
  import hyperprompt_tasks  # pylint: disable=import-outside-toplevel
  from hyperprompt_jax import evaluation  # pylint: disable=import-outside-toplevel
  from hyperprompt_tasks import metrics  # pylint: disable=import-outside-toplevel
  results = evaluation.results_of_record(record)
  out = {hyperprompt_tasks.task_key(t): float(metrics.task_score(s)) for t, s in results.items()}
  out[SCORE] = float(record['eval/average'])
  return out


def summarise(runs: Dict[int, Dict[str, float]]) -> Dict:
  """Mean and sample standard deviation (0 for one seed) of every score over seeds."""
  keys = sorted({k for scores in runs.values() for k in scores})
  values = {k: np.asarray([s[k] for s in runs.values() if k in s]) for k in keys}
  return {'n': len(runs), 'mean': {k: float(v.mean()) for k, v in values.items()},
          'std': {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}}


def markdown(results: Dict) -> str:
  """One table per group: each experiment's mean ± std per task and the demo score."""
  lines = [f'Demo runs of {results["train_steps"]} steps; mean ± std over n seeds.', '']
  for group in GROUPS:
    rows = [r for r in results['experiments'] if r['group'] == group and r['n']]
    if not rows:
      continue
    tasks = sorted({k for r in rows for k in r['mean'] if k != SCORE}) + [SCORE]
    lines += [f'### {group}', '', '| experiment | n | ' + ' | '.join(tasks) + ' |',
              '|---|---:|' + '---:|' * len(tasks)]
    for r in rows:
      cells = [f'{r["mean"][t]:.1f} ± {r["std"][t]:.1f}' if t in r['mean'] else '' for t in tasks]
      lines.append(f'| {r["label"] or r["name"]} | {r["n"]} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  return '\n'.join(lines)


def plot(results: Dict, path: str) -> Optional[str]:
  """Demo score per experiment (mean, error bars one std), a panel per group; None without
  matplotlib."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    log.info('No plot: pip install -e ".[plots]" for results.png.')
    return None
  groups = [g for g in GROUPS if any(r['group'] == g and r['n'] for r in results['experiments'])]
  if not groups:
    return None
  fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups) + 1, 3.6), squeeze=False)
  for ax, group in zip(axes[0], groups):
    rows = [r for r in results['experiments'] if r['group'] == group and r['n']]
    x = np.arange(len(rows))
    ax.bar(x, [r['mean'][SCORE] for r in rows], yerr=[r['std'][SCORE] for r in rows],
           capsize=3, color='tab:blue')
    ax.set_xticks(x, [r['name'] for r in rows], rotation=60, ha='right', fontsize=8)
    ax.set_title(group, fontsize=10)
    ax.set_ylim(0, 100)
  axes[0][0].set_ylabel(f'{SCORE} (mean ± std)')
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=120)
  plt.close(fig)
  with open(path, 'wb') as f:
    f.write(buffer.getvalue())
  return path


def collect(experiments: Sequence[Experiment], output_dir: str, seeds: Sequence[int],
            train_steps: int) -> Dict:
  """Every finished run's scores and their summaries; writes results.{json,md,png}."""
  rows = []
  for exp in experiments:
    stop = stop_step(exp, train_steps)
    runs = {}
    for seed in seeds:
      record = final_record(run_dir(output_dir, exp.runs_as, seed), stop)
      if record is not None:
        runs[seed] = task_scores(record)
    rows.append({'group': exp.group, 'name': exp.name, 'label': exp.label,
                 'runs': {str(k): v for k, v in runs.items()}, **summarise(runs)})
  results = {'train_steps': train_steps, 'seeds': list(seeds), 'experiments': rows}
  with open(os.path.join(output_dir, 'results.json'), 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(output_dir, 'results.md'), 'w', encoding='utf-8') as f:
    f.write(markdown(results))
  plot(results, os.path.join(output_dir, 'results.png'))
  return results


def run(experiments: Sequence[Experiment], output_dir: str, seeds: Sequence[int],
        train_steps: int, extra: Sequence[str] = (), dry_run: bool = False) -> List[str]:
  """Runs what has not finished (seed by seed, so every experiment gets its first seed
  early); returns the runs that failed."""
  os.makedirs(os.path.join(output_dir, 'logs'), exist_ok=True)
  failed = []
  for seed in seeds:
    for exp in experiments:
      if exp.same_as:
        continue
      args, stop = command(exp, output_dir, seed, train_steps, extra)
      model_dir = run_dir(output_dir, exp.name, seed)
      if final_record(model_dir, stop) is not None:
        continue
      if dry_run:
        print(' '.join(args))
        continue
      if exp.init_from and f'{exp.init_from}/seed_{seed}' in failed:
        failed.append(f'{exp.name}/seed_{seed}')
        continue
      log_path = os.path.join(output_dir, 'logs', f'{exp.name}-seed_{seed}.log')
      log.info('%s seed %d: %s (log %s)', exp.name, seed, model_dir, log_path)
      with open(log_path, 'a', encoding='utf-8') as out:
        code = subprocess.call(args, stdout=out, stderr=subprocess.STDOUT)
      if code or final_record(model_dir, stop) is None:
        log.error('%s seed %d failed (exit %d): see %s', exp.name, seed, code, log_path)
        failed.append(f'{exp.name}/seed_{seed}')
      collect(experiments, output_dir, seeds, train_steps)
  return failed


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m hyperprompt_jax.experiments',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--output_dir', required=True)
  parser.add_argument('--seeds', type=int, default=3, help='seeds 0 .. N-1 (default 3)')
  parser.add_argument('--groups', default='', help=f'comma-separated, of {", ".join(GROUPS)}')
  parser.add_argument('--experiments', default='', help='comma-separated experiment names')
  parser.add_argument('--train_steps', type=int, default=DEMO_STEPS,
                      help=f'steps per run (default {DEMO_STEPS}, the demo\'s)')
  parser.add_argument('--dry_run', action='store_true', help='print the commands to run')
  args, extra = parser.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith(('--gin.', '--gin_bindings', '--gin_file'))]
  if bad:
    parser.error(f'unknown arguments {bad}: only gin flags are passed on to the runs.')
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
  if args.seeds < 1 or args.train_steps < 1:
    parser.error('--seeds and --train_steps must be positive.')
  split = lambda s: [x for x in s.split(',') if x]
  try:
    experiments = select(split(args.groups), split(args.experiments))
  except ValueError as e:
    parser.error(str(e))
  seeds = list(range(args.seeds))
  os.makedirs(args.output_dir, exist_ok=True)
  failed = run(experiments, args.output_dir, seeds, args.train_steps, extra, args.dry_run)
  if args.dry_run:
    return 0
  results = collect(experiments, args.output_dir, seeds, args.train_steps)
  print(markdown(results))
  if failed:
    log.error('%d run(s) failed: %s', len(failed), ', '.join(failed))
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
