import os
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
# CPU only: no process (nor the many subprocesses, which inherit it) probes for a TPU or a
# GPU first (libtpu is installed for the deviceless compiles, which need no TPU backend).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# GLUE/SuperGLUE tasks tokenize with the shipped vocabulary: no download in tests.
os.environ['HYPERPROMPT_VOCAB'] = 'demo'
# One persistent compilation cache for the session: the many train/eval subprocesses (they
# inherit the environment) compile the demo's steps once, then load them.
os.environ.setdefault('HYPERPROMPT_COMPILATION_CACHE', tempfile.mkdtemp(prefix='hp_jax_cache_'))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hyperprompt_jax import compile_cache  # pylint: disable=wrong-import-position

compile_cache.configure()
