"""An independent numpy T5.1.1 forward pass, written from the T5 paper's description, used to
check that variant 'mtl' computes plain T5."""

import math
from collections.abc import Mapping

import numpy as np


def _bucket(rel, bidirectional, num_buckets=32, max_distance=128):
  """Bucket of one relative position (memory - query), computed element by element."""
  out = np.zeros(rel.shape, np.int64)
  for idx, r in np.ndenumerate(rel):
    n, base, nb = -int(r), 0, num_buckets
    if bidirectional:
      nb //= 2
      if n < 0:
        base = nb
      n = abs(n)
    else:
      n = max(n, 0)
    exact = nb // 2
    if n < exact:
      out[idx] = base + n
    else:
      large = exact + int(math.log(n / exact + np.finfo(np.float32).eps)
                          / math.log(max_distance / exact) * (nb - exact))
      out[idx] = base + min(large, nb - 1)
  return out


def _rms(x, scale):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * scale


def _gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _attention(p, xq, xkv, heads, visible, bias):
  b, q, _ = xq.shape
  k = xkv.shape[1]
  Q = (xq @ p['query']['kernel']).reshape(b, q, heads, -1)
  K = (xkv @ p['key']['kernel']).reshape(b, k, heads, -1)
  V = (xkv @ p['value']['kernel']).reshape(b, k, heads, -1)
  logits = np.einsum('bqhd,bkhd->bhqk', Q, K) + bias
  logits = np.where(visible[:, None], logits, -1e10)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum('bhqk,bkhd->bqhd', w, V).reshape(b, q, -1)
  return out @ p['out']['kernel']


def _mlp(p, x):
  return (_gelu(x @ p['wi_0']['kernel']) * (x @ p['wi_1']['kernel'])) @ p['wo']['kernel']


def _relbias(table, q, k, bidirectional):
  rel = np.arange(k)[None, :] - np.arange(q)[:, None]
  return table[:, _bucket(rel, bidirectional)][None]  # [1, heads, q, k]


def t5_logits(params, inputs, dec_inputs, targets, heads):
  """float64 logits [batch, target_len, vocab] of T5.1.1 (gated-GELU, untied logits)."""
  P = _to64(params)
  emb = P['token_embedder']['embedding']
  enc, dec = P['encoder'], P['decoder']
  x = emb[inputs]
  real = inputs > 0
  vis = real[:, :, None] & real[:, None, :]
  bias = _relbias(enc['relpos_bias']['rel_embedding'], x.shape[1], x.shape[1], True)
  for i in range(len([k for k in enc if k.startswith('layers_')])):
    L = enc[f'layers_{i}']
    h = _rms(x, L['pre_attention_layer_norm']['scale'])
    x = x + _attention(L['attention'], h, h, heads, vis, bias)
    x = x + _mlp(L['mlp'], _rms(x, L['pre_mlp_layer_norm']['scale']))
  encoded = _rms(x, enc['encoder_norm']['scale'])
  y = emb[dec_inputs]
  treal = targets > 0
  n = y.shape[1]
  causal = np.tril(np.ones((n, n), bool))[None]
  self_vis = causal & treal[:, :, None] & treal[:, None, :]
  cross_vis = treal[:, :, None] & real[:, None, :]
  bias = _relbias(dec['relpos_bias']['rel_embedding'], n, n, False)
  for i in range(len([k for k in dec if k.startswith('layers_')])):
    L = dec[f'layers_{i}']
    h = _rms(y, L['pre_self_attention_layer_norm']['scale'])
    y = y + _attention(L['self_attention'], h, h, heads, self_vis, bias)
    h = _rms(y, L['pre_cross_attention_layer_norm']['scale'])
    y = y + _attention(L['encoder_decoder_attention'], h, encoded, heads, cross_vis, 0.0)
    y = y + _mlp(L['mlp'], _rms(y, L['pre_mlp_layer_norm']['scale']))
  y = _rms(y, dec['decoder_norm']['scale'])
  return y @ dec['logits_dense']['kernel']


def _to64(tree):
  if isinstance(tree, Mapping):
    return {k: _to64(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)
