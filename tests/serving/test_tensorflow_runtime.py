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


# Another thread logs "line 0", "line 1"... until `stop` is set; `said` counts them
TALKER = """
import logging, threading, time
logging.basicConfig(format="%(message)s")
log = logging.getLogger("serving")
stop, said = threading.Event(), [0]
def talk():
    while not stop.is_set():
        log.warning("line %d", said[0])
        said[0] += 1
        time.sleep(PAUSE)
talker = threading.Thread(target=talk)
talker.start()
"""

LATE = (
    """
import sys, threading
from sealserve.serving.tensorflow_runtime import (
    configure_threads, defer_runtime, import_tensorflow, started,
)
assert defer_runtime()
from tensorflow_serving.apis import predict_pb2  # TF Serving's protos, without the runtime
assert not started() and "tensorflow.python" not in sys.modules
try:
    import tensorflow.python.framework.ops
except ImportError as exc:
    print("refused:", "call import_tensorflow() first" in str(exc))
assert configure_threads(2, 3)
"""
    + TALKER.replace("PAUSE", "0.0005")
    + """runtime = []  # started late, on a thread of its own, while another thread logs
starter = threading.Thread(target=lambda: runtime.append(import_tensorflow()))
starter.start()
starter.join()
stop.set()
talker.join()
tf = runtime[0]
print(said[0], tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
tensor = tf.make_tensor_proto([1.0, 2.0])  # the protos imported before are TensorFlow's own
request = predict_pb2.PredictRequest()
request.inputs["x"].CopyFrom(tensor)
print(type(tensor) is type(request.inputs["x"]), tf.make_ndarray(tensor).tolist(),
      tf.core is sys.modules["tensorflow.core"], float(tf.constant(3.0)))
"""
)


def test_a_late_start_keeps_every_other_line_and_the_thread_pools():
    """The runtime starts long after TF Serving's protos were imported, from a loading
    thread, while another thread logs: every one of that thread's lines reaches stderr, in
    order; TensorFlow's own native start-up lines do not; its pools are the configured ones;
    and the protos imported before are the runtime's (one set of classes)."""
    result = subprocess.run(
        [sys.executable, "-c", LATE], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    refused, pools, protos = result.stdout.splitlines()
    assert refused == "refused: True"  # tensorflow.python before the runtime: an ImportError
    said, intra, inter = pools.split()
    assert (intra, inter) == ("2", "3")
    assert protos == "True [1.0, 2.0] True 3.0"
    lines = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert lines == [f"line {i}" for i in range(int(said))]
    assert int(said) > 0
    assert "cudart_stub" not in result.stderr and "cuInit" not in result.stderr


SWITCHES = (
    """
import os, threading
from sealserve.serving.tensorflow_runtime import _native_start_up_lines_dropped
"""
    + TALKER.replace("PAUSE", "0.0001")
    + """for start in range(200):  # the switch back to the real stderr, many times over
    with _native_start_up_lines_dropped():
        me = threading.get_native_id()
        for _ in range(50):  # the starting thread's native lines, while it holds the GIL
            os.write(2, b"E0000 00:00:1700000000.000000 %d cuda_platform.cc:52] cuInit\\n" % me)
            sum(range(2000))
        os.write(2, b"kept %d\\n" % start)  # not a native line: passed on
stop.set()
talker.join()
print(said[0])
"""
)


def test_lines_keep_their_order_across_the_switch_back_to_stderr():
    """Other threads' lines written while the start-up filter is on and just after it comes
    off reach stderr in the order written: none written after the switch back overtakes
    one written before, however far the filter had fallen behind."""
    result = subprocess.run(
        [sys.executable, "-c", SWITCHES], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("line ")] == [
        f"line {i}" for i in range(int(result.stdout))
    ]
    assert [line for line in lines if line.startswith("kept ")] == [f"kept {i}" for i in range(200)]
    assert "cuInit" not in result.stderr


PROXY = """
import sys
from sealserve.serving.tensorflow_runtime import defer_runtime, started
assert defer_runtime()
import tensorflow as tf  # the proto-only package
assert not started()
print(float(tf.constant(2.0)), started(), "tensorflow.python" in sys.modules)
"""


def test_anything_but_protos_from_the_deferred_package_starts_the_runtime():
    result = subprocess.run(
        [sys.executable, "-c", PROXY], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2.0", "True", "True"]
    assert "cudart_stub" not in result.stderr and "cuInit" not in result.stderr


GONE = """
import os
from sealserve.serving.tensorflow_runtime import _native_start_up_lines_dropped
reader, writer = os.pipe()
os.dup2(writer, 2)
os.close(writer)
os.close(reader)  # stderr: a pipe nobody reads any more
with _native_start_up_lines_dropped():
    os.write(2, b"a line with nowhere to go\\n")
print("started")
"""


def test_a_stderr_gone_away_does_not_fail_the_start():
    """Lines with nowhere to go are dropped; the start itself goes on."""
    result = subprocess.run(
        [sys.executable, "-c", GONE], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, "started\n")
