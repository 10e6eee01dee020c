"""`python -m hyperprompt_jax.train`: see `hyperprompt_jax.training` (kept separate so that gin
registers its configurables once, not again under __main__)."""

from hyperprompt_jax.training import main

if __name__ == '__main__':
  main()
