"""Greedy decoding with the autoregressive cache (t5x's cache conventions)."""

import functools

import jax
import jax.numpy as jnp

from hyperprompt_jax.network import Transformer


@functools.lru_cache(maxsize=16)
def _compiled(config, max_length: int, eos_id: int):
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
      cache, token, out, done = carry
      logits, new = model.apply({'params': params, 'cache': cache}, encoded,
                                encoder_input_tokens, token, token, enable_dropout=False,
                                decode=True, max_decode_length=max_length, task_ids=task_ids,
                                mutable=['cache'], method=Transformer.decode)
      nxt = jnp.where(done, 0, jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32))  # [batch]
      return new['cache'], nxt[:, None], out.at[:, i].set(nxt), done | (nxt == eos_id)

    carry = (init['cache'], jnp.zeros((batch, 1), jnp.int32), shape,
             jnp.zeros((batch,), bool))
    return jax.lax.fori_loop(0, max_length, step, carry)[2]
  return run


def greedy_decode(model: Transformer, params, encoder_input_tokens, task_ids, max_length: int,
                  eos_id: int = 1):
  """Greedy continuation of each row: [batch, max_length] tokens, 0 after EOS."""
  return _compiled(model.config, max_length, eos_id)(params, encoder_input_tokens, task_ids)
