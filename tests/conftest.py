import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
# GLUE/SuperGLUE tasks tokenize with the shipped vocabulary: no download in tests.
os.environ['HYPERPROMPT_VOCAB'] = 'demo'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
