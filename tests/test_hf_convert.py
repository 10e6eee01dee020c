"""Hugging Face T5 / T5.1.1 weights convert into our tree and give the same logits (skipped
without the `hf` extra: transformers, torch, safetensors)."""


import numpy as np
import pytest

from hyperprompt_jax import hf_convert
from hyperprompt_jax.network import Transformer

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
pytest.importorskip('safetensors')

LAYOUTS = {
    't5.1.1': dict(feed_forward_proj='gated-gelu', tie_word_embeddings=False),
    't5': dict(feed_forward_proj='relu', tie_word_embeddings=True),
}


def _hf_model(layout):
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                 num_decoder_layers=3, num_heads=4, dropout_rate=0.0,
                                 relative_attention_num_buckets=32,
                                 relative_attention_max_distance=128, decoder_start_token_id=0,
                                 pad_token_id=0, eos_token_id=1, **LAYOUTS[layout])
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():  # random, not-small weights everywhere (layer norms included)
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_converted_weights_give_hugging_face_logits(layout, tmp_path):
  model = _hf_model(layout)
  model.save_pretrained(tmp_path, safe_serialization=True)
  hf_config, state = hf_convert.read_hf_dir(str(tmp_path))
  cfg = hf_convert.config_from_hf(hf_config, variant='mtl', dropout_rate=0.0)
  params = hf_convert.hf_to_params(state, cfg)
  rng = np.random.RandomState(1)
  inputs = rng.randint(2, 96, (2, 11)).astype(np.int32)
  inputs[1, 7:] = 0
  targets = rng.randint(2, 96, (2, 6)).astype(np.int32)
  dec_inputs = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)
  ours = Transformer(cfg).apply({'params': params}, inputs, dec_inputs, targets,
                                enable_dropout=False)
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(inputs, dtype=torch.long),
                   attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
                   decoder_input_ids=torch.tensor(dec_inputs, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=1e-4)
  # Back again: the exported state dict holds the very same weights.
  back = hf_convert.params_to_hf(params, cfg)
  for name, value in model.state_dict().items():
    np.testing.assert_array_equal(back[name], value.numpy(), err_msg=name)


def test_command_line_round_trip(tmp_path):
  model = _hf_model('t5.1.1')
  model.save_pretrained(tmp_path / 'hf', safe_serialization=True)
  hf_convert.main(['to-ours', '--hf_dir', str(tmp_path / 'hf'), '--output', str(tmp_path / 'ours')])
  hf_convert.main(['to-hf', '--checkpoint', str(tmp_path / 'ours'), '--hf_dir',
                   str(tmp_path / 'hf'), '--output', str(tmp_path / 'back')])
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / 'back').eval()
  for name, value in model.state_dict().items():
    np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), value.numpy(), err_msg=name)
  # A config.json of another size is refused, naming the array; a missing folder is one line.
  other = _hf_model('t5.1.1')
  other.config.d_model = 64
  other.config.save_pretrained(tmp_path / 'other')
  with pytest.raises(SystemExit, match=r"error: the checkpoint's .* is \(96, 32\) but the "
                                       r'config.json gives \(96, 64\)'):
    hf_convert.main(['to-hf', '--checkpoint', str(tmp_path / 'ours'), '--hf_dir',
                     str(tmp_path / 'other'), '--output', str(tmp_path / 'bad')])
  assert not (tmp_path / 'bad' / 'model.safetensors').exists()
  with pytest.raises(SystemExit, match='error: No such file or directory: .*nowhere'):
    hf_convert.main(['to-ours', '--hf_dir', str(tmp_path / 'nowhere'), '--output',
                     str(tmp_path / 'x')])
