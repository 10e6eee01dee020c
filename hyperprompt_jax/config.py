"""HyperPromptConfig: t5x's T5Config fields (same names, meanings and defaults) plus ours."""

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

VARIANTS = ('mtl', 'prompt_tuning', 'share', 'sep', 'global', 'adapter', 'hyperformer')
HYPERPROMPT_VARIANTS = ('share', 'sep', 'global')
ADAPTER_VARIANTS = ('adapter', 'hyperformer')
EMBEDDING_LOOKUPS = ('auto', 'one_hot', 'gather')


@dataclasses.dataclass(frozen=True)
class HyperPromptConfig:
  """Hyperparameters of the network; read in modules as `cfg = self.config`.

  The first twelve fields mirror t5x `examples/t5/network.T5Config`, so a t5x gin binding
  of them means the same here. The rest select and size the task conditioning:

  variant: 'mtl' (plain T5), 'prompt_tuning' (per-task input prompts), 'share' / 'sep' /
    'global' (HyperPrompt, He et al. 2022), 'adapter' (per-task Houlsby adapters after each
    feed-forward block) or 'hyperformer' (adapters generated from task and layer embeddings).
  num_tasks: size of the task table; task ids must lie in [0, num_tasks).
  prompt_length: l, hyper-prompt (or input prompt) length. Default 16.
  hyper_bottleneck: b, bottleneck of the local hypernetworks D: d -> b, U: b -> h*d_h.
    Default 32.
  task_embedding_dim: t', size of task and layer embeddings ('global', 'hyperformer').
    Default 64.
  layer_task_embedding_dim: t, size of the layer-aware task embedding I = h_t([k; z]).
    Default 64.
  adapter_dim: bottleneck of the adapters ('adapter', 'hyperformer'). Default 64.
  encoder_prompts / decoder_prompts: put hyper-prompts in encoder / decoder self-attention.
  share_encoder_decoder_prompts: one set of global prompts and hypernetworks for both stacks,
    layers indexed across both (encoder first). Default True.
  remat: recompute each layer's activations in the backward pass (memory for XL/XXL).
  embedding_lookup: how token ids become embeddings: 'one_hot' (a one-hot matmul, t5x's
    choice: partitions cleanly and is fast on TPU), 'gather' (a table lookup: no wasted
    FLOPs; faster on CPU and GPU) or 'auto' (default: 'one_hot' on TPU, else 'gather').
    The logits are the same either way.
  """
  vocab_size: int
  dtype: Any = jnp.float32
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ('relu',)
  dropout_rate: float = 0.1
  logits_via_embedding: bool = False
  float32_attention_logits: bool = False
  # Task conditioning.
  variant: str = 'global'
  num_tasks: int = 8
  prompt_length: int = 16
  hyper_bottleneck: int = 32
  task_embedding_dim: int = 64
  layer_task_embedding_dim: int = 64
  adapter_dim: int = 64
  encoder_prompts: bool = True
  decoder_prompts: bool = True
  share_encoder_decoder_prompts: bool = True
  remat: bool = False
  embedding_lookup: str = 'auto'

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f'Unknown variant {self.variant!r}: choose one of {", ".join(VARIANTS)}.')
    if self.embedding_lookup not in EMBEDDING_LOOKUPS:
      raise ValueError(f'Unknown embedding_lookup {self.embedding_lookup!r}: choose one of '
                       f'{", ".join(EMBEDDING_LOOKUPS)}.')
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'num_tasks',
                 'prompt_length', 'hyper_bottleneck', 'task_embedding_dim',
                 'layer_task_embedding_dim', 'adapter_dim'):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f'HyperPromptConfig.{name} must be a positive integer, got {value!r}.')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'HyperPromptConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}.')
    if self.is_hyperprompt and not (self.encoder_prompts or self.decoder_prompts):
      raise ValueError(f'variant {self.variant!r} with encoder_prompts=False and '
                       'decoder_prompts=False has no prompts: enable one or use variant "mtl".')

  @property
  def one_hot_embedding(self) -> bool:
    """Whether the token embedding is a one-hot matmul ('auto': on TPU only)."""
    if self.embedding_lookup == 'auto':
      return jax.default_backend() == 'tpu'
    return self.embedding_lookup == 'one_hot'

  @property
  def is_conditioned(self) -> bool:
    """Whether the network needs task ids when applied."""
    return self.variant != 'mtl'

  @property
  def is_hyperprompt(self) -> bool:
    return self.variant in HYPERPROMPT_VARIANTS

  def prompted_layers(self, stack: str) -> int:
    """Number of self-attention layers of `stack` that carry hyper-prompts."""
    if not self.is_hyperprompt:
      return 0
    if stack == 'encoder':
      return self.num_encoder_layers if self.encoder_prompts else 0
    return self.num_decoder_layers if self.decoder_prompts else 0
