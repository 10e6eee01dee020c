"""One trainer per MODEL_DIR: MODEL_DIR/.lock names its holder (host, pid) and carries a
heartbeat refreshed every 30 seconds while the run lives.

A second trainer on the same directory stops with one line naming the holder. A lock left
by a run that died is taken over: at once when its process is gone from this host, and
otherwise after STALE_SECONDS without a heartbeat (another host's, such as a preempted TPU
VM's, or a process id that a new process reuses).
Written by process 0 only; gs:// works (object stores have no atomic create, so two starts
in the same instant there are not told apart).
"""

import atexit
import json
import logging
import os
import socket
import threading
import time
from typing import Optional

from tensorflow.io import gfile

from hyperprompt_jax import files

log = logging.getLogger('hyperprompt_jax')

LOCK_FILE = '.lock'
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 180.0


class LockedError(RuntimeError):
  """Another live trainer holds MODEL_DIR (the message names it and the fix)."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class RunLock:
  """MODEL_DIR/.lock for this process (call `acquire`, then `release` at the end; an exit
  without `release` leaves a lock that the next run takes over)."""

  def __init__(self, model_dir: str, clock=time.time):
    self.path = os.path.join(model_dir, LOCK_FILE)
    self.clock = clock
    self.me = {'host': socket.gethostname(), 'pid': os.getpid()}
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def holder(self) -> Optional[dict]:
    if not gfile.exists(self.path):
      return None
    try:
      with gfile.GFile(self.path) as f:
        return json.load(f)
    except (ValueError, OSError):
      return {}  # torn: its writer died while writing it

  def _stale_reason(self, holder: dict) -> Optional[str]:
    """Why a lock can be taken over, or None while its holder lives."""
    if not holder:
      return 'the lock file is unreadable'
    same_host = holder.get('host') == self.me['host']
    if same_host and holder.get('pid') == self.me['pid']:
      return 'this process holds it'
    if same_host and not _alive(int(holder.get('pid', -1))):
      return f'process {holder.get("pid")} is gone'
    age = self.clock() - float(holder.get('heartbeat', 0))
    if age > STALE_SECONDS:
      return f'no heartbeat from {holder.get("host")} for {age / 60:.1f} minutes'
    return None

  def acquire(self) -> None:
    holder = self.holder()
    if holder is not None:
      reason = self._stale_reason(holder)
      if reason is None:
        raise LockedError(
            f'{os.path.dirname(self.path)} is in use by another trainer (host '
            f'{holder.get("host")}, pid {holder.get("pid")}, since {holder.get("started")}): '
            f'wait for it, stop it, or use another MODEL_DIR (a lock without a heartbeat for '
            f'{STALE_SECONDS / 60:.0f} minutes is taken over; if that run is gone, delete '
            f'{self.path}).')
      if holder.get('pid') != self.me['pid']:
        log.warning('Taking over %s (%s).', self.path, reason)
    if '://' not in self.path:
      self._create_exclusively(holder is not None)
    self._write(started=time.strftime('%Y-%m-%d %H:%M:%S'))
    self._thread = threading.Thread(target=self._beat, daemon=True)
    self._thread.start()
    atexit.register(self.release)

  def _create_exclusively(self, replacing: bool) -> None:
    """Two local trainers starting at once: only one creates the file."""
    if replacing:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
    try:
      os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
      holder = self.holder() or {}
      raise LockedError(f'{os.path.dirname(self.path)} was just taken by another trainer '
                        f'(host {holder.get("host")}, pid {holder.get("pid")}): use another '
                        'MODEL_DIR or wait for it.') from None

  def _write(self, **extra) -> None:
    record = dict(self.holder() or {}, **self.me, **extra, heartbeat=self.clock())
    files.write_text_atomic(self.path, json.dumps(record))

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        self._write()
      except Exception as e:  # pylint: disable=broad-except  (a passing storage error)
        log.warning('Could not refresh %s: %s', self.path, e)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)
    holder = self.holder()
    if holder and holder.get('pid') == self.me['pid'] and holder.get('host') == self.me['host']:
      gfile.remove(self.path)
