"""Attention analysis: prompt mass per encoder layer and entropies."""

import json
import os

import numpy as np
import pytest

from hyperprompt_jax import analysis, partitioning
from hyperprompt_jax.network import Transformer
from tests.helpers import init_params, random_tokens, scanned, tiny_config


def test_prompt_mass_and_entropy_per_layer():
  tokens = random_tokens(0, (3, 9), pad_from=[9, 5, 7])
  ids = np.array([0, 1, 2], np.int32)
  cfg = tiny_config('global')
  stats = analysis.encoder_attention_stats(Transformer(cfg), init_params(cfg), tokens, ids)
  assert stats['count'] == (9 + 5 + 7) * cfg.num_heads
  mass = stats['prompt_mass'] / stats['count']
  entropy = stats['entropy'] / stats['count']
  assert mass.shape == (cfg.num_encoder_layers,) and ((mass > 0) & (mass < 1)).all()
  # Each query spreads over at most l + its row's real keys.
  assert ((entropy > 0) & (entropy <= np.log(cfg.prompt_length + 9))).all()
  mtl = tiny_config('mtl')
  base = analysis.encoder_attention_stats(Transformer(mtl), init_params(mtl), tokens, None)
  assert (base['prompt_mass'] == 0).all() and (base['entropy'] > 0).all()


def test_decoder_prompt_mass_and_entropy_per_layer():
  """Decoder self-attention, teacher-forced: a query at target position j sees the l prompts
  and j + 1 targets, so its entropy is at most log(l + j + 1); without prompts the first
  position attends to itself only (entropy 0) and no mass goes to prompts."""
  tokens = random_tokens(0, (3, 9), pad_from=[9, 5, 7])
  targets = random_tokens(1, (3, 5), pad_from=[5, 3, 4])
  ids = np.array([0, 1, 2], np.int32)
  cfg = tiny_config('global')
  stats = analysis.decoder_attention_stats(Transformer(cfg), init_params(cfg), tokens, targets,
                                           ids)
  assert stats['count'] == (5 + 3 + 4) * cfg.num_heads
  mass, entropy = stats['prompt_mass'] / stats['count'], stats['entropy'] / stats['count']
  assert mass.shape == (cfg.num_decoder_layers,) and ((mass > 0) & (mass < 1)).all()
  assert ((entropy > 0) & (entropy <= np.log(cfg.prompt_length + 5))).all()
  encoder_only = tiny_config('global', decoder_prompts=False)
  base = analysis.decoder_attention_stats(Transformer(encoder_only), init_params(encoder_only),
                                          tokens, targets, ids)
  assert (base['prompt_mass'] == 0).all()
  one = analysis.decoder_attention_stats(Transformer(encoder_only), init_params(encoder_only),
                                         tokens, targets[:, :1], ids)
  np.testing.assert_allclose(one['entropy'], 0.0, atol=1e-4)


def test_recording_attention_does_not_change_the_encoding():
  cfg = tiny_config('share')
  params = init_params(cfg)
  tokens = random_tokens(1, (2, 6))
  ids = np.array([1, 2], np.int32)
  model = Transformer(cfg)
  plain = model.apply({'params': params}, tokens, enable_dropout=False, task_ids=ids,
                      method=Transformer.encode)
  recorded, state = model.apply({'params': params}, tokens, enable_dropout=False, task_ids=ids,
                                method=Transformer.encode, mutable=['intermediates'])
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(recorded))
  assert 'prompt_mass' in state['intermediates']['encoder']['layers_0']['attention']


def test_figures_are_valid_pngs(tmp_path):
  pytest.importorskip('matplotlib')
  cfg = tiny_config('global', num_tasks=3)
  report = {'step': 5, 'variant': 'global', 'prompt_mass_per_layer': [0.1, 0.2],
            'entropy_per_layer': [2.0, 2.5], 'decoder_prompt_mass_per_layer': [0.3, 0.1],
            'decoder_entropy_per_layer': [1.0, 1.5]}
  written = analysis.figures(report, init_params(cfg), str(tmp_path), {0: 'a', 1: 'b', 2: 'c'})
  assert [os.path.basename(p) for p in written] == ['attention_5.png', 'task_embeddings_5.png']
  for path in written:
    with open(path, 'rb') as f:
      data = f.read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000
  with open(tmp_path / 'attention_5.json') as f:
    assert json.load(f) == report
  mtl = tiny_config('mtl')  # no task embeddings: the attention figure only
  assert len(analysis.figures(report, init_params(mtl), str(tmp_path / 'mtl'))) == 1


def test_a_scanned_model_gives_the_same_statistics_per_layer():
  """... and so does the command's way (parameters on a mesh, statistics under jit)."""
  tokens = random_tokens(0, (3, 9), pad_from=[9, 5, 7])
  targets = random_tokens(1, (3, 5), pad_from=[5, 3, 4])
  ids = np.array([0, 1, 2], np.int32)
  cfg = tiny_config('global')
  params = init_params(cfg)
  scan_cfg, scan_params = scanned(cfg, params)
  for fn, args in ((analysis.encoder_attention_stats, (tokens, ids)),
                   (analysis.decoder_attention_stats, (tokens, targets, ids))):
    plain = fn(Transformer(cfg), params, *args)
    stacked = fn(Transformer(scan_cfg), scan_params, *args)
    on_mesh = fn(Transformer(scan_cfg), scan_params, *args, partitioning.Partitioner(1))
    for key in ('prompt_mass', 'entropy'):
      np.testing.assert_allclose(stacked[key], plain[key], rtol=1e-5)
      np.testing.assert_allclose(on_mesh[key], plain[key], rtol=1e-5)
    assert stacked['count'] == plain['count'] == on_mesh['count']
