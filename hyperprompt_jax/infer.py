"""`python -m hyperprompt_jax.infer`: see `hyperprompt_jax.run_infer` (kept separate so that gin
registers its configurables once, not again under __main__)."""

from hyperprompt_jax.run_infer import main

if __name__ == '__main__':
  main()
