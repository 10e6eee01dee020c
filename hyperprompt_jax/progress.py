"""The trainer's console progress (lines with an ETA once it can be measured, the summary at
the end) and metrics.jsonl's steps_per_second."""

import logging
import time
from typing import Dict

import hyperprompt_tasks

log = logging.getLogger('hyperprompt_jax')


class StepRate:
  """metrics.jsonl's steps_per_second: the steps since the previous record over the time
  they took, less the time spent evaluating and saving in between (`exclude`)."""

  def __init__(self, step: int, clock=time.time):
    self.clock = clock
    self._step, self._time, self._excluded = step, clock(), 0.0

  def exclude(self, seconds: float) -> None:
    self._excluded += seconds

  def since_last(self, step: int) -> float:
    now = self.clock()
    rate = (step - self._step) / max(now - self._time - self._excluded, 1e-9)
    self._step, self._time, self._excluded = step, now, 0.0
    return rate


class Clock:
  """Progress lines with an ETA, and the end-of-training summary."""

  def __init__(self, start: int, train_steps: int, every_seconds: float):
    self.start, self.train_steps, self.every = start, train_steps, every_seconds
    self.began = self.last = time.time()
    self.first = None

  def report(self, step: int, loss: float) -> None:
    now = time.time()
    if self.first is None:  # the rate is measured after the first step (its compile)
      self.first = (step, now)
    if now - self.last < self.every and step != self.train_steps:
      return
    self.last = now
    first_step, first_time = self.first
    if step == first_step:  # nothing timed yet: no rate, no ETA
      log.info('step %d/%d  loss %.4f', step, self.train_steps, loss)
      return
    rate = (step - first_step) / max(now - first_time, 1e-9)
    log.info('step %d/%d  loss %.4f  %.1f steps/s  ETA %s', step, self.train_steps, loss, rate,
             _duration((self.train_steps - step) / rate))

  def summary(self, step: int, batch_size: int, record: Dict, best: Dict) -> str:
    wall = time.time() - self.began
    steps = step - self.start
    lines = [f'training done: {steps} steps (to step {step}) in {_duration(wall)}, '
             f'{steps * batch_size / max(wall, 1e-9):.1f} examples/s (rows of BATCH_SIZE), '
             f'final loss {record.get("loss", float("nan")):.4f}']
    for task, entry in sorted(best.get('tasks', {}).items()):
      lines.append(f'  best {hyperprompt_tasks.task_key(task)}: {entry["score"]:.2f} '
                   f'at step {entry["step"]}')
    if 'average_of_best' in best:
      lines.append(f'  average of the best per task: {best["average_of_best"]:.2f}')
    return '\n'.join(lines)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  return f'{h}:{rest // 60:02d}:{rest % 60:02d}' if h else f'{rest // 60}:{rest % 60:02d}'
