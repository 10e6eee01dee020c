"""Hugging Face T5 / T5.1.1 weights <-> our parameter tree (t5x's layout), both ways.

    python -m hyperprompt_jax.hf_convert to-ours --hf_dir ./t5-v1_1-base --output ./ckpt
    python -m hyperprompt_jax.hf_convert to-hf --checkpoint ./ckpt --hf_dir ./t5-v1_1-base \
        --output ./exported

`to-ours` reads a local `save_pretrained` folder (config.json + *.safetensors; nothing is
downloaded) and writes an orbax checkpoint usable as INITIAL_CHECKPOINT_PATH; `to-hf` writes
the T5 weights of one of our checkpoints as model.safetensors beside the given config.json.
Only the T5 weights convert: task-conditioning parameters have no Hugging Face counterpart.
"""

import argparse
import glob
import json
import os
import shutil
import sys
from typing import Any, Dict

import numpy as np

from hyperprompt_jax.config import HyperPromptConfig

_ENC_ATTN = ('layer.0.SelfAttention', 'attention', 'layer.0.layer_norm', 'pre_attention_layer_norm')
_DEC_BLOCKS = [('layer.0.SelfAttention', 'self_attention', 'layer.0.layer_norm',
                'pre_self_attention_layer_norm'),
               ('layer.1.EncDecAttention', 'encoder_decoder_attention', 'layer.1.layer_norm',
                'pre_cross_attention_layer_norm')]


def config_from_hf(hf: Dict[str, Any], **overrides) -> HyperPromptConfig:
  """HyperPromptConfig with a Hugging Face T5 config.json's dimensions."""
  proj = hf.get('feed_forward_proj', 'relu')
  activations = {'relu': ('relu',), 'gated-gelu': ('gelu', 'linear'),
                 'gated-relu': ('relu', 'linear')}.get(proj)
  if activations is None:
    raise ValueError(f'feed_forward_proj {proj!r} is not a T5 / T5.1.1 layout.')
  # T5 scales the decoder output by d^-0.5 and reads logits off the embedding; T5.1.1 does
  # neither (transformers 5 always ties lm_head to the embedding and records the scaling as
  # scale_decoder_outputs; transformers 4 wrote tie_word_embeddings=False for T5.1.1).
  scaled = hf.get('scale_decoder_outputs', hf.get('tie_word_embeddings', True))
  fields = dict(vocab_size=hf['vocab_size'], emb_dim=hf['d_model'], num_heads=hf['num_heads'],
                num_encoder_layers=hf['num_layers'],
                num_decoder_layers=hf.get('num_decoder_layers') or hf['num_layers'],
                head_dim=hf['d_kv'], mlp_dim=hf['d_ff'], mlp_activations=activations,
                dropout_rate=hf.get('dropout_rate', 0.1),
                logits_via_embedding=bool(scaled))
  fields.update(overrides)
  return HyperPromptConfig(**fields)


def _mlp_names(cfg: HyperPromptConfig):
  if len(cfg.mlp_activations) == 1:
    return [('wi', 'wi')]
  return [(f'wi_{i}', f'wi_{i}') for i in range(len(cfg.mlp_activations))]


def _pairs(cfg: HyperPromptConfig):
  """(hf name, our path, transpose?) for every T5 weight."""
  out = [('shared.weight', 'token_embedder/embedding', False)]
  for stack, n, blocks, mlp_layer, norm in (
      ('encoder', cfg.num_encoder_layers, [_ENC_ATTN], 1, 'encoder_norm'),
      ('decoder', cfg.num_decoder_layers, _DEC_BLOCKS, 2, 'decoder_norm')):
    out.append((f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
                f'{stack}/relpos_bias/rel_embedding', True))
    for i in range(n):
      hf, ours = f'{stack}.block.{i}', f'{stack}/layers_{i}'
      for hf_attn, our_attn, hf_norm, our_norm in blocks:
        for hf_p, our_p in (('q', 'query'), ('k', 'key'), ('v', 'value'), ('o', 'out')):
          out.append((f'{hf}.{hf_attn}.{hf_p}.weight', f'{ours}/{our_attn}/{our_p}/kernel', True))
        out.append((f'{hf}.{hf_norm}.weight', f'{ours}/{our_norm}/scale', False))
      for hf_p, our_p in _mlp_names(cfg) + [('wo', 'wo')]:
        out.append((f'{hf}.layer.{mlp_layer}.DenseReluDense.{hf_p}.weight',
                    f'{ours}/mlp/{our_p}/kernel', True))
      out.append((f'{hf}.layer.{mlp_layer}.layer_norm.weight', f'{ours}/pre_mlp_layer_norm/scale',
                  False))
    out.append((f'{stack}.final_layer_norm.weight', f'{stack}/{norm}/scale', False))
  if not cfg.logits_via_embedding:
    out.append(('lm_head.weight', 'decoder/logits_dense/kernel', True))
  return out


def hf_to_params(state_dict: Dict[str, np.ndarray], cfg: HyperPromptConfig) -> Dict[str, Any]:
  """A Hugging Face T5 state dict (numpy) -> our nested 'params' tree (T5 weights only)."""
  params: Dict[str, Any] = {}
  if not cfg.logits_via_embedding and 'lm_head.weight' not in state_dict:
    state_dict = dict(state_dict, **{'lm_head.weight': state_dict['shared.weight']})  # tied
  missing = [hf for hf, _, _ in _pairs(cfg) if hf not in state_dict]
  if missing:
    raise ValueError(f'{len(missing)} T5 weights missing from the Hugging Face state dict, '
                     f'e.g. {missing[0]}: is the config.json the model\'s own?')
  for hf, ours, transpose in _pairs(cfg):
    value = np.asarray(state_dict[hf], np.float32)
    node = params
    *parents, leaf = ours.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value.T if transpose else value
  return params


def params_to_hf(params: Dict[str, Any], cfg: HyperPromptConfig) -> Dict[str, np.ndarray]:
  """Our 'params' tree -> a Hugging Face T5 state dict (numpy, float32). Every array must have
  the shape `cfg` (from the target config.json) gives it: weights never go out under a
  config.json of another size."""
  from hyperprompt_jax import models  # pylint: disable=import-outside-toplevel
  from hyperprompt_jax.network import Transformer  # pylint: disable=import-outside-toplevel
  expected = models.init_variables_abstract(Transformer(cfg))['params']
  out = {}
  for hf, ours, transpose in _pairs(cfg):
    node, want = params, expected
    for p in ours.split('/'):
      if p not in node:
        raise ValueError(f'the checkpoint has no {ours}, which the config.json\'s model has '
                         f'({hf}): pass the config.json of the model it was trained from.')
      node, want = node[p], want[p]
    if tuple(np.shape(node)) != tuple(want.shape):
      raise ValueError(f'the checkpoint\'s {ours} is {tuple(np.shape(node))} but the '
                       f'config.json gives {tuple(want.shape)}: pass the config.json of the model '
                       'it was trained from (d_model, d_ff, num_heads, d_kv, num_layers, '
                       'vocab_size).')
    value = np.asarray(node, np.float32)
    out[hf] = np.ascontiguousarray(value.T if transpose else value)
  out['encoder.embed_tokens.weight'] = out['shared.weight'].copy()
  out['decoder.embed_tokens.weight'] = out['shared.weight'].copy()
  if cfg.logits_via_embedding:
    out['lm_head.weight'] = out['shared.weight'].copy()
  return out


def read_hf_dir(hf_dir: str):
  """config.json and the safetensors weights of a local save_pretrained folder."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  with open(os.path.join(hf_dir, 'config.json')) as f:
    hf_config = json.load(f)
  files = sorted(glob.glob(os.path.join(hf_dir, '*.safetensors')))
  if not files:
    raise ValueError(f'No *.safetensors in {hf_dir}: save the model with '
                     'save_pretrained(..., safe_serialization=True).')
  state = {}
  for path in files:
    state.update(load_file(path))
  return hf_config, state


def main(argv=None):
  """The command; a missing folder or file, or a config.json that does not match the
  checkpoint, is one `error:` line."""
  try:
    _main(argv)
  except (OSError, ValueError) as e:
    if os.environ.get('HYPERPROMPT_DEBUG'):
      raise
    text = f'{e.strerror}: {e.filename}' if isinstance(e, OSError) and e.filename else str(e)
    sys.exit(f'error: {text.strip().splitlines()[0]}')


def _main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True)
  to_ours = sub.add_parser('to-ours')
  to_ours.add_argument('--hf_dir', required=True)
  to_ours.add_argument('--output', required=True)
  to_hf = sub.add_parser('to-hf')
  to_hf.add_argument('--checkpoint', required=True)
  to_hf.add_argument('--hf_dir', required=True, help='folder with the config.json to match')
  to_hf.add_argument('--output', required=True)
  args = parser.parse_args(argv)
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from hyperprompt_jax import checkpoints  # pylint: disable=import-outside-toplevel
  if args.command == 'to-ours':
    hf_config, state = read_hf_dir(args.hf_dir)
    params = hf_to_params(state, config_from_hf(hf_config))
    path = os.path.join(os.path.abspath(args.output), 'checkpoint_0', 'default')
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(path, {'params': params})
    print(path)
  else:
    with open(os.path.join(args.hf_dir, 'config.json')) as f:
      hf_config = json.load(f)
    state = params_to_hf(checkpoints.load_params(args.checkpoint), config_from_hf(hf_config))
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    os.makedirs(args.output, exist_ok=True)
    save_file(state, os.path.join(args.output, 'model.safetensors'))
    shutil.copy(os.path.join(args.hf_dir, 'config.json'), args.output)
    print(args.output)


if __name__ == '__main__':
  main()
