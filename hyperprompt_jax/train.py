"""The train command: `python -m hyperprompt_jax.train --gin_file=runs/demo.gin ...`; `train`
is the loop (input, steps, checkpoints, logging, periodic evaluation), configured by gin.

Macros (t5x's names): MODEL_DIR, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, TRAIN_STEPS,
BATCH_SIZE, INITIAL_CHECKPOINT_PATH (optional), NUM_PARTITIONS (model-parallel size).
TRAIN_STEPS is the absolute step to stop at (t5x's convention): a run from an
INITIAL_CHECKPOINT_PATH starts at that checkpoint's step. Writes MODEL_DIR/checkpoint_<step>,
MODEL_DIR/metrics.jsonl (one JSON object per logged step and per evaluation), TensorBoard
under MODEL_DIR/train and, with periodic evaluation, MODEL_DIR/training_eval/ (see
evaluation.EvalOutput); the console shows progress with an ETA, a table per evaluation and
a summary at the end.
"""

import json
import logging
import os
import signal
import sys
import time
from typing import Dict, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils
from tensorflow.io import gfile

import hyperprompt_tasks
from hyperprompt_jax import (checkpoints, compile_cache, console, evaluation, files, gin_utils,
                             input_pipeline, models, partitioning, run_lock, runtime, trainer)
from hyperprompt_jax.progress import Clock, StepRate
from hyperprompt_jax.run_checks import (MODEL_CONFIG_FILE, TrainingError, check_model_config,
                                        check_train_args, config_record)
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import Transformer

log = logging.getLogger('hyperprompt_jax')


def prepare_model_dir(model_dir: str) -> None:
  if gfile.exists(model_dir) and not gfile.isdir(model_dir):
    raise TrainingError(f'MODEL_DIR {model_dir} is a file: pass a directory path.')
  gfile.makedirs(model_dir)


class MetricsLog:
  """MODEL_DIR/metrics.jsonl, flushed after every record; on resume, training records past
  the restored step (logged after the last checkpoint of a killed run) are dropped."""

  def __init__(self, model_dir: str, resume_step: int):
    self.path = os.path.join(model_dir, 'metrics.jsonl')
    self.appender = None
    if jax.process_index() == 0:
      kept = [r for r in files.read_jsonl(self.path) if r.get('step', 0) <= resume_step]
      self.appender = files.JsonlAppender(self.path, kept)

  def write(self, record: Dict) -> None:
    if self.appender is not None:
      self.appender.write(record)


class Preemption:
  """SIGTERM (a preemption, a scheduler) and SIGINT (Ctrl-C): the loop saves a checkpoint at
  the end of the current step and exits with 128 + the signal's number (143, 130), so a
  scheduler never takes an interrupted run for a finished one; rerunning the command
  continues it. A second Ctrl-C stops at once. With several processes, jax's preemption
  sync manager (set up by jax.distributed, notified by SIGTERM; Ctrl-C is passed on to it as
  SIGTERM) picks one step that every process reaches, so all of them save the same step."""

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self.signum: Optional[int] = None
    self._sync_points, self._reached = 0, False
    if not self.multi_process:
      signal.signal(signal.SIGTERM, self._handle)
    signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C stops at once
      os.write(2, b'\nCtrl-C: saving at the end of this step, then stopping (Ctrl-C again '
                  b'stops at once, losing the steps since the last checkpoint).\n')
    if self.multi_process:
      self.signum = self.signum or signum
      if signum == signal.SIGINT:
        os.kill(os.getpid(), signal.SIGTERM)  # jax's sync manager listens for SIGTERM
      return
    self.signum = self.signum or signum

  def requested(self) -> bool:
    """Whether to stop here. Call at the same points on every process (after each step, and
    between evaluation batches): with several processes each call is a sync point of jax's
    preemption manager, numbered by this counter, so all processes stop at the same one."""
    if self.multi_process:
      if self._reached:  # every process reached it at the same call: all stop from here on
        return True
      self._sync_points += 1
      reached = self._reached = multihost_utils.reached_preemption_sync_point(self._sync_points)
      if reached and self.signum is None:
        self.signum = signal.SIGTERM  # another process was told
      return reached
    return self.signum is not None

  @property
  def exit_status(self) -> int:
    return 128 + int(self.signum or signal.SIGTERM)


def jit_train_step(model: Transformer, optimizer, part: partitioning.Partitioner, params,
                   param_shardings, *, seed: int = 0, z_loss: float = 1e-4,
                   num_microbatches: int = 1, donate_state: Optional[bool] = None):
  """The trainer's jitted step with its state shardings. `params` may be abstract
  (ShapeDtypeStructs): benchmarks/tpu_fit.py compiles this same step for a TPU topology.

  donate_state: the step overwrites the state's buffers (None: on accelerators, where it
  saves a copy of the parameters and optimizer state in device memory; not on the CPU,
  where XLA then copies every parameter each step: 7.8% of an emb-256 step here)."""
  if donate_state is None:
    donate_state = part.mesh.devices.flat[0].platform != 'cpu'
  opt_abstract = jax.eval_shape(optimizer.init, params)
  state_shardings = {'step': part.replicated, 'params': param_shardings,
                     'opt_state': part.opt_state_shardings(opt_abstract, params,
                                                           param_shardings)}
  step_fn = trainer.make_train_step(model, optimizer, model.config.num_tasks, seed, z_loss,
                                    num_microbatches)
  with part.context():
    step = jax.jit(step_fn, in_shardings=(state_shardings, None),
                   out_shardings=(state_shardings, part.replicated),
                   donate_argnums=(0,) if donate_state else ())
  return step, state_shardings


def jit_saved_loss(model: Transformer, part: partitioning.Partitioner, param_shardings,
                   z_loss: float = 1e-4):
  """The loss of given parameters on a batch, forward only and without dropout: what the
  trainer checks before it saves a step's parameters (the step's own loss was computed
  before its update)."""
  def loss(params, batch):
    _, aux = models.loss_and_aux(model, params, batch, None, model.config.num_tasks, z_loss,
                                 enable_dropout=False)
    return models.metrics_of(aux)['loss']
  with part.context():
    return jax.jit(loss, in_shardings=(param_shardings, None), out_shardings=part.replicated)


def start_params(run: runtime.Runtime, model_dir: str, seed: int,
                 initial_checkpoint_path: Optional[str], train_steps: int,
                 new_tasks_only: bool, resuming: bool):
  """Phase 1, the parameters to start from, each in its sharding: freshly initialised, with
  INITIAL_CHECKPOINT_PATH's loaded into them (task tables grown when the model has more
  tasks). Returns (params, start step, first new task row or None). When resuming, the
  checkpoint is restored later, with the optimizer state."""
  config = run.config
  params = run.init_params(seed)
  start, first_new_task = 0, None
  if initial_checkpoint_path:
    params, report = checkpoints.load_initial_params(initial_checkpoint_path, params,
                                                     run.param_shardings,
                                                     checkpoints.task_axes(run.abstract))
    start = report['step']
    params = _vocab_prompts_from_checkpoint(config, params, report, seed)
    if report['grown']:
      log.info('Task tables grown (checkpoint tasks -> model tasks): %s', report['grown'])
    if new_tasks_only:
      if not report['grown']:
        raise TrainingError(f'train.new_tasks_only: {initial_checkpoint_path} already has '
                            f'num_tasks={config.num_tasks} task rows; raise num_tasks to add tasks.')
      first_new_task = min(old for old, _ in report['grown'].values())
    log.info('Initial checkpoint %s (step %d): %d loaded, %d initialised (%s), %d unused (%s)',
             initial_checkpoint_path, start, len(report['loaded']), len(report['initialised']),
             report['initialised'], len(report['unused']), report['unused'])
    if start >= train_steps:
      raise TrainingError(
          f'TRAIN_STEPS={train_steps} is not past the initial checkpoint\'s step {start}: '
          f'TRAIN_STEPS is the absolute step to stop at, as in t5x; pass '
          f'--gin.TRAIN_STEPS={start + max(train_steps, 1)} to train {max(train_steps, 1)} steps.')
  if new_tasks_only and resuming:  # the run's record says where the new rows start
    first_new_task = new_tasks_only_from(model_dir)
  return params, start, first_new_task


def train_input(part: partitioning.Partitioner, mixture_or_task_name: str,
                task_feature_lengths: Dict[str, int], batch_size: int, data_seed: int,
                pack: bool, max_segments: int, use_cached_tasks: bool,
                input_shards: Optional[int]) -> input_pipeline.ShardedInput:
  """Phase 2, this process's input: the global batch read as `input_shards` shards (default
  one per data-parallel row block), this process reading the shards of its rows; each
  shard's position is saved by the first process that reads it."""
  _, row_blocks = part.process_rows(batch_size)
  num_shards = input_shards or row_blocks
  shards_of = {p: input_pipeline.shards_for_rows(r, batch_size, num_shards)
               for p, r in part.rows_of_processes(batch_size).items()}
  shards = shards_of[jax.process_index()]
  writer = {i: min(p for p, s in shards_of.items() if i in s) for i in range(num_shards)}
  datasets = input_pipeline.train_datasets(
      mixture_or_task_name, task_feature_lengths, batch_size, data_seed, pack=pack,
      max_segments=max_segments, use_cached=use_cached_tasks, num_shards=num_shards,
      shard_indices=shards)
  if not use_cached_tasks and jax.process_count() > 1 and jax.process_index() == 0:
    log.warning('The tasks are read uncached on %d processes: cache them once with seqio '
                '(docs/tasks.md, "Preparing the data") for better shuffling across restarts '
                'and less CPU per host.', jax.process_count())
  return input_pipeline.ShardedInput(
      datasets, num_shards, batch_size,
      writes=[i for i in shards if writer[i] == jax.process_index()])


@gin.configurable
def train(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Dict[str, int] = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, config: HyperPromptConfig = gin.REQUIRED,
          initial_checkpoint_path: Optional[str] = None, num_partitions: int = 1,
          learning_rate: float = 1e-3, seed: int = 0, data_seed: int = 0,
          save_every_steps: int = 2000, keep_checkpoints: int = 3, log_every_steps: int = 100,
          eval_every_steps: int = 0, eval_batch_size: int = 32,
          eval_max_examples: Optional[int] = None, pack: bool = True, max_segments: int = 8,
          trainable_regex: str = '.*', frozen_regex: Optional[str] = None,
          num_microbatches: int = 1, z_loss: float = 1e-4,
          report_every_seconds: float = 10.0, parameter_partitioning_dims: int = 1,
          activation_partitioning_dims: int = 1, input_shards: Optional[int] = None,
          use_cached_tasks: bool = False, seqio_cache_dirs: Sequence[str] = (),
          new_tasks_only: bool = False, adafactor_parameter_scale: bool = True,
          weight_decay_rate: Optional[float] = None,
          donate_state: Optional[bool] = None, allow_config_change: bool = False) -> Dict:
  """Trains (or resumes) a run in `model_dir`; returns the last logged metrics.

  parameter_partitioning_dims / activation_partitioning_dims: t5x's 1-D / 2-D sharding
  (2 = parameters and optimizer state also split over 'data'). input_shards: how many
  shards the global batch is read from (default: one per data-parallel process group, so
  each process reads only its own); fix it to get the same batches on any number of
  processes. new_tasks_only: INITIAL_CHECKPOINT_PATH has fewer tasks than the model; train
  only the new tasks' rows (task embeddings, prompts, adapters), every other parameter and
  the old tasks' rows unchanged. adafactor_parameter_scale / weight_decay_rate: Adafactor's
  update scaling by each parameter's RMS (T5's default, on) and decoupled weight decay
  (default none). donate_state: the step reuses the state's buffers (default: on
  accelerators, not on the CPU; see jit_train_step). use_cached_tasks: read seqio's cached
  tasks (made by seqio's cache_tasks_main into one of `seqio_cache_dirs`; see README).
  allow_config_change: resume although the model's configuration differs from the one the
  run was started with (see check_model_config).

  One trainer per MODEL_DIR (run_lock). config.gin and model_config.json are written once
  every check has passed, so a rerun that fails leaves the run's record as it was.
  """
  check_train_args(train_steps=train_steps, batch_size=batch_size,
                   save_every_steps=save_every_steps, keep_checkpoints=keep_checkpoints,
                   log_every_steps=log_every_steps, eval_every_steps=eval_every_steps,
                   eval_batch_size=eval_batch_size, num_microbatches=num_microbatches,
                   max_segments=max_segments)
  model_dir = files.expand(model_dir)
  if seqio_cache_dirs:
    seqio.add_global_cache_dirs([files.expand(d) for d in seqio_cache_dirs])
  prepare_model_dir(model_dir)
  if jax.process_index() == 0:
    run_lock.RunLock(model_dir).acquire()
  console.keep_in(os.path.join(model_dir, 'logs', f'train_{jax.process_index()}.log'))
  check_model_config(model_dir, config, allow_config_change)
  checkpoints.check_task_ids(model_dir, hyperprompt_tasks.task_id_map(mixture_or_task_name))
  if batch_size % num_microbatches:
    raise TrainingError(f'BATCH_SIZE={batch_size} is not divisible by num_microbatches='
                        f'{num_microbatches}.')
  if config.variant == 'prompt_tuning' and pack:
    raise TrainingError("variant 'prompt_tuning' cannot use packed rows: bind train.pack = False.")
  models.check_num_tasks(config, hyperprompt_tasks.task_ids_of(mixture_or_task_name))
  run = runtime.build(config, num_partitions, parameter_partitioning_dims,
                      activation_partitioning_dims)
  part, model, abstract, param_shardings = (run.partitioner, run.model, run.abstract,
                                            run.param_shardings)
  store = checkpoints.CheckpointStore(model_dir, keep_checkpoints)
  latest = store.latest_step()
  if new_tasks_only and not initial_checkpoint_path:
    raise TrainingError('train.new_tasks_only needs an INITIAL_CHECKPOINT_PATH with fewer '
                        'tasks than network.HyperPromptConfig.num_tasks.')
  params, start, first_new_task = start_params(
      run, model_dir, seed, initial_checkpoint_path if latest is None else None, train_steps,
      new_tasks_only, resuming=latest is not None)
  optimizer = trainer.make_optimizer(learning_rate, params, trainable_regex, frozen_regex,
                                     first_new_task, checkpoints.task_axes(abstract),
                                     adafactor_parameter_scale,
                                     weight_decay_rate)
  if first_new_task is not None and jax.process_index() == 0:
    files.write_text_atomic(os.path.join(model_dir, 'new_tasks_from.txt'), str(first_new_task))
  train_step, state_shardings = jit_train_step(
      model, optimizer, part, params, param_shardings, seed=seed, z_loss=z_loss,
      num_microbatches=num_microbatches, donate_state=donate_state)
  opt_state = jax.jit(optimizer.init, out_shardings=state_shardings['opt_state'])(params)
  state = {'step': jnp.asarray(start, jnp.int32), 'params': params, 'opt_state': opt_state}

  iterator = train_input(part, mixture_or_task_name, task_feature_lengths, batch_size,
                         data_seed, pack, max_segments, use_cached_tasks, input_shards)
  if latest is not None:
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings)
    state, latest = store.restore_latest_readable(abstract_state, iterator)
    log.info('Resumed from %s at step %d.', model_dir, latest)
  start = int(state['step'])
  # Every check has passed: the run's record.
  checkpoints.check_task_ids(model_dir, hyperprompt_tasks.task_id_map(mixture_or_task_name),
                             write=True)
  gin_utils.write_config(model_dir)
  if jax.process_index() == 0:
    files.write_text_atomic(os.path.join(model_dir, MODEL_CONFIG_FILE),
                            json.dumps(config_record(config), indent=1, sort_keys=True))
  saved_loss = jit_saved_loss(model, part, param_shardings, z_loss)

  metrics_log = MetricsLog(model_dir, start)
  # t5x's TensorBoard layout: MODEL_DIR/train/, MODEL_DIR/training_eval/ (periodic eval).
  writer = metric_writers.create_default_writer(os.path.join(model_dir, 'train'),
                                                just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=train_steps, writer=writer,
                                             every_steps=max(log_every_steps, 1))
  eval_output = evaluation.EvalOutput(os.path.join(model_dir, 'training_eval'), model_dir)
  preemption = Preemption()
  task_names = {tid: name for name, tid in sorted(hyperprompt_tasks.TASK_IDS.items(),
                                                  reverse=True)}
  task_ids_present = set(hyperprompt_tasks.task_ids_of(mixture_or_task_name))
  last_record, last_saved = {}, latest
  step_rate = StepRate(start)
  clock = Clock(start, train_steps, report_every_seconds)
  best = {}

  def evaluate_step(step, best):
    """The periodic evaluation of `step`: its record, table and best; (score, best)."""
    # A signal is acted on between eval batches (with several processes: at the same batch).
    stop = preemption.requested
    results, predictions = evaluation.evaluate(
        model, state['params'], mixture_or_task_name, task_feature_lengths, eval_batch_size,
        max_examples=eval_max_examples, should_stop=stop, partitioner=part)
    record, written = eval_output.write(step, results, predictions)
    metrics_log.write(record)
    log.info('%s', evaluation.format_table(step, results))
    return record.get('eval/average'), written or best

  if (latest is not None and eval_every_steps
      and (start % eval_every_steps == 0 or start == train_steps)
      and not any(r.get('step') == start and 'eval/average' in r
                  for r in files.read_jsonl(eval_output.sources[0]))):
    log.info('Step %d was saved before its evaluation finished: evaluating it now.', start)
    try:
      _, best = evaluate_step(start, best)
    except evaluation.Interrupted:
      log.warning('Interrupted again during the evaluation of step %d; nothing is lost.', start)
      sys.exit(preemption.exit_status)

  def save(step, batch, score=None):
    """Saves the state after `step` unless its parameters already diverged: their loss on
    the step's batch is checked first, so a saved checkpoint is always a good one."""
    nonlocal last_saved
    if last_saved == step:
      return
    with part.context():
      loss = float(jax.device_get(saved_loss(state['params'], batch)))
    if not np.isfinite(loss):
      kept = (f'The last good checkpoint (step {last_saved}) is kept in {model_dir}'
              if last_saved is not None else 'No checkpoint of this run was saved yet')
      raise TrainingError(
          f'The parameters after step {step} give loss {loss}: not saved. {kept}. Lower the '
          'learning rate or check the data, then rerun.')
    store.save(step, state, iterator, score)
    last_saved = step

  for step in range(start, train_steps):
    batch = part.shard_batch(next(iterator), batch_size)
    if step == start:  # the call that compiles the step (or loads it from the cache)
      hits_before, began = compile_cache.hits(), time.time()
    with part.context():
      state, metrics = train_step(state, batch)
    if step == start:
      log.info('Train step %s.', compile_cache.describe(time.time() - began, hits_before))
    done = step + 1
    progress(done)
    preempted = preemption.requested()
    must_check = (done % log_every_steps == 0 or done % save_every_steps == 0
                  or done == train_steps or preempted)
    if must_check:
      metrics = jax.device_get(metrics)
      loss = float(metrics['loss'])
      if not np.isfinite(loss):
        kept = (f'the last good checkpoint (step {last_saved}) is kept in {model_dir}'
                if last_saved is not None else 'no checkpoint of this run was saved yet')
        raise TrainingError(f'Loss is {loss} at step {done}: training stopped; {kept}. Lower '
                            'the learning rate or check the data.')
      if done % log_every_steps == 0 or done == train_steps:
        record = {'step': done, 'loss': loss, 'learning_rate': learning_rate,
                  'steps_per_second': step_rate.since_last(done)}
        for tid in sorted(task_ids_present):
          if metrics['task_tokens'][tid] > 0:
            record[f'loss/{task_names.get(tid, tid)}'] = float(metrics['task_loss'][tid])
        metrics_log.write(record)
        # clu's ReportProgress writes steps_per_sec: one steps-per-second scalar.
        writer.write_scalars(done, {k: v for k, v in record.items()
                                    if k not in ('step', 'steps_per_second')})
        last_record = record
        clock.report(done, loss)
    score, pause_began = None, step_rate.clock()
    if eval_every_steps and (done % eval_every_steps == 0 or done == train_steps):
      try:
        if preempted:  # the signal came during the step: save now, evaluate on the rerun
          raise evaluation.Interrupted()
        score, best = evaluate_step(done, best)
      except evaluation.Interrupted:  # a signal during the evaluation: save, evaluate later
        preempted = True
        log.warning('%s during the evaluation of step %d: it runs again when the run '
                    'continues.', signal.Signals(preemption.exit_status - 128).name, done)
    if done % save_every_steps == 0 or done == train_steps or preempted:
      save(done, batch, score)
    step_rate.exclude(step_rate.clock() - pause_began)
    if preempted:
      name = signal.Signals(preemption.exit_status - 128).name
      log.warning('%s: saved step %d in %s; rerun the same command to continue (exit status '
                  '%d).', name, done, model_dir, preemption.exit_status)
      writer.flush()
      sys.exit(preemption.exit_status)
  if start >= train_steps:
    log.info('Nothing to do: %s is already at step %d of %d.', model_dir, start, train_steps)
  else:
    log.info('%s', clock.summary(train_steps, batch_size, last_record, best))
  writer.flush()
  return last_record


def _vocab_prompts_from_checkpoint(config: HyperPromptConfig, params, report: Dict, seed: int):
  """Input prompts that the checkpoint did not hold (all, or the new tasks' rows) drawn from
  its token embeddings rather than from the random ones they started from."""
  name = 'input_prompts/prompts'
  if config.variant != 'prompt_tuning' or config.input_prompt_init != 'vocab':
    return params
  if name in report['grown']:
    first = report['grown'][name][0]
  elif name in report['initialised'] and 'token_embedder/embedding' in report['loaded']:
    first = 0
  else:
    return params
  log.info('Input prompts of tasks %d.. drawn from the checkpoint\'s token embeddings.', first)
  return models.redraw_vocab_prompts(params, seed, first)


def new_tasks_only_from(model_dir: str) -> int:
  """The first new task id of a new_tasks_only run (written when it started)."""
  path = os.path.join(model_dir, 'new_tasks_from.txt')
  if not gfile.exists(path):
    raise TrainingError(f'{model_dir} has no new_tasks_from.txt: it was not started with '
                        'train.new_tasks_only; use a new MODEL_DIR.')
  with gfile.GFile(path) as f:
    return int(f.read().strip())


def main(argv=None):
  gin_utils.run_command('hyperprompt_jax.train', 'train',
                        'Multi-task fine-tuning of HyperPrompt T5.', argv)


if __name__ == '__main__':
  main()
