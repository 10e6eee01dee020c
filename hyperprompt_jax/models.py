"""The model around the network: initialisation, inputs of a batch, the loss (with per-task
sums) and greedy decoding with the autoregressive cache.

Everything here is a pure function of a `Transformer` and arrays; the trainer, evaluation,
the analyses and the benchmarks share it. Nothing here knows seqio, gin or checkpoints.
"""

import functools
from typing import Dict, Sequence

import jax
import jax.numpy as jnp

from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.hypernetworks import sample_vocab_prompts
from hyperprompt_jax.network import Transformer
from hyperprompt_jax.task_ids import token_tasks

BATCH_KEYS_PACKED = ('encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions',
                     'decoder_positions')


# --- initialisation ---------------------------------------------------------------------------

def init_fn(model: Transformer):
  """rng -> all variables (params and params_axes), from dummy inputs of any length."""
  x = jnp.ones((1, 4), jnp.int32)
  return lambda rng: model.init(rng, x, x, x, enable_dropout=False)


def init_variables_abstract(model: Transformer):
  """Shapes and dtypes of every variable, without allocating (XXL costs nothing)."""
  return jax.eval_shape(init_fn(model), jax.random.PRNGKey(0))


def init_params(model: Transformer, seed: int, shardings=None):
  """Freshly initialised params, created directly in `shardings` (never on one host)."""
  init = init_fn(model)
  return jax.jit(lambda r: init(r)['params'], out_shardings=shardings)(
      jax.random.PRNGKey(seed))


def redraw_vocab_prompts(params, seed: int, first_row: int = 0):
  """'prompt_tuning' with input_prompt_init='vocab': the input prompts' rows >= first_row
  drawn again from the model's current token embeddings. At initialisation they are drawn
  from the random embeddings; after INITIAL_CHECKPOINT_PATH replaced those, this draws them
  from the pretrained ones (Lester et al.'s initialisation). Keeps every sharding."""
  prompts = params['input_prompts']['prompts']  # [T, l_in, d]
  table = params['token_embedder']['embedding']  # [vocab, d]

  def draw(prompts, table):
    fresh = sample_vocab_prompts(jax.random.PRNGKey(seed), table, prompts.shape)
    keep = jnp.arange(prompts.shape[0])[:, None, None] < first_row
    return jnp.where(keep, prompts, fresh.astype(prompts.dtype))
  drawn = jax.jit(draw, out_shardings=prompts.sharding)(prompts, table)
  return {**params, 'input_prompts': {**params['input_prompts'], 'prompts': drawn}}


def check_num_tasks(config: HyperPromptConfig, task_ids: Sequence[int],
                    source: str = 'The mixture', trained: bool = False) -> None:
  """Every task id `source` uses must index the model's task table (checked on the host:
  inside jit an out-of-range id only gives NaN). trained: the model exists (eval, infer),
  so the fix is other inputs, not a bigger table."""
  if not config.is_conditioned:
    return
  bad = sorted({int(t) for t in task_ids if not 0 <= int(t) < config.num_tasks})
  if bad:
    fix = ('use tasks this model was trained on (ids 0..'
           f'{config.num_tasks - 1}) or a model with more task rows' if trained else
           f'set network.HyperPromptConfig.num_tasks to at least {max(task_ids) + 1}')
    ids = ', '.join(map(str, bad[:3])) + (', ...' if len(bad) > 3 else '')
    raise ValueError(f'{source} uses task id {ids} but the model has num_tasks='
                     f'{config.num_tasks}: {fix}.')


# --- loss -------------------------------------------------------------------------------------

def model_inputs(batch):
  """Positional model arguments of a feature-converted batch."""
  packed = [batch.get(k) for k in BATCH_KEYS_PACKED]
  return (batch['encoder_input_tokens'], batch['decoder_input_tokens'],
          batch['decoder_target_tokens'], *packed)


def cross_entropy_with_z_loss(logits, targets, z_loss: float):
  """Per-token cross entropy plus T5's z-loss (z_loss * log(Z)^2): [batch, len]."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [batch, len]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit + z_loss * jnp.square(log_z)


def loss_and_aux(model: Transformer, params, batch, rng, num_tasks: int, z_loss: float,
                 enable_dropout: bool = True):
  """Summed token loss and per-task sums/counts (for per-task losses)."""
  cfg = model.config
  logits = model.apply({'params': params}, *model_inputs(batch), enable_dropout=enable_dropout,
                       rngs={'dropout': rng} if enable_dropout else None,
                       task_ids=batch['task_ids'] if cfg.is_conditioned else None)
  targets = batch['decoder_target_tokens']
  weights = batch['decoder_loss_weights'].astype(jnp.float32)  # [batch, len]
  token_loss = cross_entropy_with_z_loss(logits, targets, z_loss) * weights
  tasks = token_tasks(batch['task_ids'], batch.get('decoder_segment_ids'), targets.shape[1])
  onehot = jax.nn.one_hot(tasks, num_tasks) * weights[..., None]  # [batch, len, tasks]
  aux = {'loss_sum': token_loss.sum(), 'tokens': weights.sum(),
         'task_loss_sum': jnp.einsum('bl,blt->t', token_loss, onehot),
         'task_tokens': onehot.sum((0, 1))}
  return aux['loss_sum'], aux


def metrics_of(aux: Dict[str, jnp.ndarray]) -> Dict[str, jnp.ndarray]:
  """Mean loss and per-task mean losses from summed auxiliaries."""
  tokens = jnp.maximum(aux['tokens'], 1.0)
  return {'loss': aux['loss_sum'] / tokens,
          'task_loss': aux['task_loss_sum'] / jnp.maximum(aux['task_tokens'], 1.0),
          'task_tokens': aux['task_tokens']}


# --- decoding ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _compiled_greedy(config: HyperPromptConfig, max_length: int, eos_id: int):
  model = Transformer(config)

  @jax.jit
  def run(params, encoder_input_tokens, task_ids):
    task_ids = task_ids if config.is_conditioned else None
    variables = {'params': params}
    encoded = model.apply(variables, encoder_input_tokens, enable_dropout=False,
                          task_ids=task_ids, method=Transformer.encode)
    batch = encoder_input_tokens.shape[0]
    shape = jnp.zeros((batch, max_length), jnp.int32)
    _, init = model.apply(variables, encoded, encoder_input_tokens, shape, shape,
                          enable_dropout=False, decode=True, task_ids=task_ids,
                          mutable=['cache'], method=Transformer.decode)

    def step(i, carry):
      cache, token, out, done, finite = carry
      logits, new = model.apply({'params': params, 'cache': cache}, encoded,
                                encoder_input_tokens, token, token, enable_dropout=False,
                                decode=True, max_decode_length=max_length, task_ids=task_ids,
                                mutable=['cache'], method=Transformer.decode)
      nxt = jnp.where(done, 0, jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32))  # [batch]
      finite = finite & (done | jnp.isfinite(logits[:, -1]).all(-1))
      return (new['cache'], nxt[:, None], out.at[:, i].set(nxt), done | (nxt == eos_id),
              finite)

    carry = (init['cache'], jnp.zeros((batch, 1), jnp.int32), shape,
             jnp.zeros((batch,), bool), jnp.ones((batch,), bool))
    _, _, tokens, _, finite = jax.lax.fori_loop(0, max_length, step, carry)
    return tokens, finite
  return run


def greedy_decode(model: Transformer, params, encoder_input_tokens, task_ids, max_length: int,
                  eos_id: int = 1, return_finite: bool = False):
  """Greedy continuation of each row with the cache: [batch, max_length] tokens, 0 after EOS.
  return_finite: also [batch] bools, False where a step's logits were not finite (a task id
  outside [0, num_tasks) gives NaN logits inside jit; so do diverged parameters): such a
  row's tokens are no prediction."""
  tokens, finite = _compiled_greedy(model.config, max_length, eos_id)(
      params, encoder_input_tokens, task_ids)
  return (tokens, finite) if return_finite else tokens

