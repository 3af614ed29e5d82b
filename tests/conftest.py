"""Test setup: the repository root on sys.path, TF graph mode, quiet logs."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
