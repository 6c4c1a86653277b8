"""TensorFlow starts quietly, with the thread pools the flags ask for."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
from sealserve.serving.tensorflow_runtime import configure_threads, import_tensorflow
assert configure_threads(2, 3)
tf = import_tensorflow()
print(tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
print(configure_threads(4, 4))  # too late now
print(configure_threads(2, 3), configure_threads(0, 0))  # what it has already: fine
"""


def test_thread_pools_are_sized_before_start_and_stderr_stays_clean():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "3", "False", "True", "True"]
    assert "cudart_stub" not in result.stderr and "cuInit" not in result.stderr
