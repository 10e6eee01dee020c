"""hyperprompt_jax: HyperPrompt (He et al., ICML 2022) for T5 in JAX/Flax."""

from setuptools import setup

INSTALL_REQUIRES = [
    'jax>=0.10.2,<0.11',
    'jaxlib>=0.10.2,<0.11',
    'flax>=0.12.8,<0.13',
    'optax>=0.2.8,<0.3',
    'orbax-checkpoint>=0.12.8,<0.13',
    'gin-config>=0.5.0,<0.6',
    'seqio>=0.0.20,<0.1',
    'tensorflow-cpu>=2.21.0,<3',
    'tensorflow-text>=2.21.1,<3',
    'tensorflow-datasets>=4.9.10,<5',
    'clu>=0.0.12,<0.1',
    'sentencepiece>=0.2.1,<0.3',
    'tensorboard>=2.21.0,<3',
    'importlib_resources>=7.1.0,<8',
    'numpy>=2.4.6,<3',
    'tensorstore>=0.1.86,<0.2',
]

HF_REQUIRES = ['transformers>=5.23.0,<6', 'safetensors>=0.8.0,<1', 'torch>=2.13.0,<3']
PLOTS_REQUIRES = ['matplotlib>=3.11.2,<4']  # the analysis' figures
# libtpu at the version jax pins: TPU VMs, and deviceless TPU compiles on any Linux x86 machine
# (benchmarks/tpu_fit.py).
TPU_REQUIRES = ['jax[tpu]>=0.10.2,<0.11; sys_platform == "linux" and platform_machine == "x86_64"']

setup(
    name='hyperprompt_jax',
    version='0.1.0',
    description='HyperPrompt: hypernetwork-generated prompts for multi-task T5, in JAX/Flax.',
    python_requires='>=3.11',
    # The gin files ship inside the package (hyperprompt_jax/gin in a wheel; gin_utils.GIN_DIR
    # finds them there or in a source checkout's gin/).
    packages=['hyperprompt_jax', 'hyperprompt_jax.gin', 'hyperprompt_tasks'],
    package_dir={'hyperprompt_jax': 'hyperprompt_jax', 'hyperprompt_jax.gin': 'gin',
                 'hyperprompt_tasks': 'tasks'},
    package_data={'hyperprompt_jax.gin': ['**/*.gin'], 'hyperprompt_tasks': ['vocab/*']},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        'hf': HF_REQUIRES,
        'tpu': TPU_REQUIRES,
        'plots': PLOTS_REQUIRES,
        # The tests cover the Hugging Face conversion too (torch's CPU build, ~1 minute); the
        # deviceless TPU compile test runs where the tpu extra is installed (CI: .[test,tpu]).
        # apache-beam runs seqio's cache_tasks_main (README "Caching tasks"); it needs
        # protobuf < 7, hence sentencepiece 0.2.2 in constraints.txt (0.2.3 needs protobuf 7).
        'test': ['pytest>=9.2.0,<10', 'apache-beam[tfrecord]>=2.77.0,<3'] + HF_REQUIRES
                + PLOTS_REQUIRES,
    },
)
