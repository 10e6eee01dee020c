"""hyperprompt_jax: HyperPrompt (He et al., ICML 2022) for T5 in JAX/Flax.

    from hyperprompt_jax.network import HyperPromptConfig, Transformer

Imports point one way: commands (train, eval, infer, analysis) -> trainer / evaluation /
checkpoints -> models -> network -> hypernetworks, layers. Command lines:
`python -m hyperprompt_jax.train | eval | infer | analysis` (gin-configured),
`python -m hyperprompt_jax.param_report`, `python -m hyperprompt_jax.hf_convert`,
`python -m hyperprompt_jax.checkpoints to-t5x`. Only `hyperprompt_jax.t5x_model` imports t5x.
"""

__version__ = '0.1.0'

import sys as _sys

if _sys.argv[:1] == ['-m']:  # a command is starting (python -m hyperprompt_jax.<command>):
  from hyperprompt_jax import console as _console  # other libraries' output to a log file,
  _console.quiet()  # before TensorFlow and jax are imported
