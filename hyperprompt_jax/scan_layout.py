"""The two layouts of a stack's layers in a parameter tree, and conversion between them.

Unscanned (t5x's `examples/t5` and every T5X/HF checkpoint): `encoder/layers_0/...`,
`encoder/layers_1/...`. Scanned (`HyperPromptConfig.scan_layers`, t5x's scalable_t5):
`encoder/layers/...`, each leaf stacked on a leading [num_layers] axis. Everything outside the
layers (embeddings, norms, hypernetworks) is the same in both. Paths here are tuples of keys,
as `flax.traverse_util.flatten_dict` gives them.
"""

import re
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

STACKS = ('encoder', 'decoder')
SCANNED = 'layers'
_UNSCANNED = re.compile(r'^layers_(\d+)$')

Path = Tuple[str, ...]


def layout_of(paths) -> Optional[bool]:
  """True if the paths hold scanned layers, False if unscanned, None if they hold neither."""
  for path in paths:
    if len(path) > 2 and path[0] in STACKS:
      if path[1] == SCANNED:
        return True
      if _UNSCANNED.match(path[1]):
        return False
  return None


def unscanned_path(path: Path, layer: int) -> Path:
  """`encoder/layers/...` -> `encoder/layers_<layer>/...`."""
  return (path[0], f'layers_{layer}') + tuple(path[2:])


def scanned_source(path: Path) -> Optional[Tuple[Path, int]]:
  """(`encoder/layers/...`, layer) of an unscanned layer path, or None for other paths."""
  if len(path) > 2 and path[0] in STACKS:
    m = _UNSCANNED.match(path[1])
    if m:
      return (path[0], SCANNED) + tuple(path[2:]), int(m.group(1))
  return None


def is_scanned_path(path: Path) -> bool:
  return len(path) > 2 and path[0] in STACKS and path[1] == SCANNED


def stack_flat(flat: Dict[Path, Any], stack: Callable = np.stack) -> Dict[Path, Any]:
  """Unscanned flat tree -> scanned: each layer leaf stacked (with `stack`) over layers."""
  out, groups = {}, {}
  for path, value in flat.items():
    source = scanned_source(path)
    if source is None:
      out[path] = value
    else:
      groups.setdefault(source[0], {})[source[1]] = value
  for path, layers in groups.items():
    if sorted(layers) != list(range(len(layers))):
      raise ValueError(f'{"/".join(path)}: layers {sorted(layers)} are not 0 .. {len(layers) - 1}.')
    out[path] = stack([layers[i] for i in range(len(layers))])
  return out


def unstack_flat(flat: Dict[Path, Any]) -> Dict[Path, Any]:
  """Scanned flat tree -> unscanned: each stacked leaf split into its layers."""
  out = {}
  for path, value in flat.items():
    if is_scanned_path(path):
      for i in range(value.shape[0]):
        out[unscanned_path(path, i)] = value[i]
    else:
      out[path] = value
  return out


def to_layout(flat: Dict[Path, Any], scanned: bool, stack: Callable = np.stack):
  """`flat` in the scanned (True) or unscanned layout, whichever it is in now."""
  current = layout_of(flat)
  if current is None or current == scanned:
    return dict(flat)
  return stack_flat(flat, stack) if scanned else unstack_flat(flat)
