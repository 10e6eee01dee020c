"""Analytic model FLOPs of a train step (the MFU numerator), per PaLM / MaxText's convention:
matmul FLOPs of the model only, 2 per multiply-add, forward + backward = 3 x forward; no
FLOPs for the embedding lookup (a gather, whatever the implementation does), layer norms,
softmax or elementwise work. XLA's own count of the compiled step is the hardware figure (HFU).

Per example, with E = input length, D = target length, d = emb_dim, k = heads * head_dim,
f = mlp_dim * (number of mlp_activations) + mlp_dim, V = vocab_size, L_e / L_d layers:

  encoder layer, per input token:   2 (4 d k + d f)       projections and MLP
                                    4 k (E + p_e)         scores and weighted values
  decoder layer, per target token:  2 (4 d k + 2 d k + d f)  self q,k,v,o; cross q,o; MLP
                                    4 k (D + p_d)         self-attention
                                    4 k E                 cross-attention
  decoder layer, per input token:   2 (2 d k)             cross-attention keys and values
  logits, per target token:         2 d V

p_e / p_d: hyper-prompt columns per row (l, or S*l when packed with S segments), or the input
prompts' input_prompt_length for 'prompt_tuning' (added to E). Attention is counted in full
(not halved for causal masking), as PaLM counts it. Task conditioning per step (independent
of the batch): the hyper-prompt generators for all T tasks, HyperFormer++'s generation of
every adapter for all T tasks; per token: adapters (2 * 2 d a per adapter).
"""

from hyperprompt_jax.config import HyperPromptConfig


def _prompt_generation(cfg: HyperPromptConfig) -> float:
  """Forward FLOPs of generating every prompted layer's key and value prompts, all tasks."""
  layers = cfg.prompted_layers('encoder') + cfg.prompted_layers('decoder')
  if not layers:
    return 0.0
  T, l, d, b = cfg.num_tasks, cfg.prompt_length, cfg.emb_dim, cfg.hyper_bottleneck
  k = cfg.num_heads * cfg.head_dim
  per_kind = 2 * T * l * (d * b + b * k)  # P D^m_tau, then ReLU(.) U^m_tau
  if cfg.variant == 'global':
    t = cfg.layer_task_embedding_dim
    per_kind += 2 * T * t * (d * b + b * k)  # D^m_tau = W^D I, U^m_tau = W^U I
    projector = 2 * T * (2 * cfg.task_embedding_dim * t + t * t)
    return layers * (2 * per_kind + projector)
  return layers * 2 * per_kind


def forward_flops(cfg: HyperPromptConfig, batch: int, input_length: int, target_length: int,
                  segments: int = 1) -> float:
  """Model FLOPs of one forward pass over `batch` rows (see the module docstring)."""
  d, k, V = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.vocab_size
  f = cfg.mlp_dim * (len(cfg.mlp_activations) + 1)
  E, D = input_length, target_length
  if cfg.variant == 'prompt_tuning':
    E += cfg.input_prompt_length
  p_e = cfg.prompt_length * segments if cfg.prompted_layers('encoder') else 0
  p_d = cfg.prompt_length * segments if cfg.prompted_layers('decoder') else 0
  enc_layer = E * (2 * (4 * d * k + d * f) + 4 * k * (E + p_e))
  dec_layer = (D * (2 * (6 * d * k + d * f) + 4 * k * (D + p_d) + 4 * k * E)
               + E * 2 * 2 * d * k)
  per_row = (cfg.num_encoder_layers * enc_layer + cfg.num_decoder_layers * dec_layer
             + D * 2 * d * V)
  blocks = len(cfg.adapter_blocks)
  per_row += blocks * 2 * 2 * d * cfg.adapter_size * (
      cfg.num_encoder_layers * E + cfg.num_decoder_layers * D)
  return float(batch * per_row + _prompt_generation(cfg) + _adapter_generation(cfg))


def _adapter_generation(cfg: HyperPromptConfig) -> float:
  """Forward FLOPs of HyperFormer++ generating every adapter (and its layer norm) of every
  layer and block for all T tasks."""
  if cfg.variant != 'hyperformer':
    return 0.0
  T, t, H = cfg.num_tasks, cfg.layer_task_embedding_dim, cfg.hyperformer_hidden_dim
  d, a = cfg.emb_dim, cfg.adapter_size
  projector = 2 * T * (3 * cfg.task_embedding_dim * H + H * t)
  generators = 2 * T * t * (2 * d * a + a + 3 * d)
  adapters = (cfg.num_encoder_layers + cfg.num_decoder_layers) * len(cfg.adapter_blocks)
  return float(adapters * (projector + generators))


def train_step_flops(cfg: HyperPromptConfig, batch: int, input_length: int,
                     target_length: int, segments: int = 1) -> float:
  """Model FLOPs of one train step: forward + backward = 3 x forward."""
  return 3.0 * forward_flops(cfg, batch, input_length, target_length, segments)
