"""`python -m hyperprompt_jax.eval`: see `hyperprompt_jax.run_eval` (kept separate so that gin
registers its configurables once, not again under __main__)."""

from hyperprompt_jax.run_eval import main

if __name__ == '__main__':
  main()
