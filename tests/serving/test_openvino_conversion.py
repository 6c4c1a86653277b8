"""The conversion process of the OpenVINO runtime: every way it can end without an answer
(crash, kill, hang, garbage, a stopping server) ends the load with one clear reason and no
process left behind; it dies with the server; where no process can start, the conversion
runs in the server's process. The messages it exchanges with the server round-trip."""

from __future__ import annotations

import io
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sealserve.model_tree import encrypt_tree
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.loader import LoadOptions, VersionLoader
from sealserve.serving.runtimes import conversion, parse_runtime
from sealserve.serving.runtimes.conversion import (
    ConversionFailed,
    ProtocolError,
    read_header,
    read_stream,
)
from sealserve.serving.runtimes.openvino_worker import (
    ConversionRequest,
    ConversionResult,
    SignatureConversion,
    files_sent_along,
    read_request,
    read_result,
    write_files,
    write_request,
    write_result,
)
from tests.serving.conftest import SECRET_KEY
from tests.serving.test_openvino import live_children

GUARD_SECONDS = 120  # only so that a broken implementation cannot hang the suite


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory, digits_model) -> Path:
    root = tmp_path_factory.mktemp("conversion")
    encrypt_tree(digits_model, str(root / "digits" / "1"), SECRET_KEY)
    return root / "digits" / "1"


def load(path: Path, runtime: str = "openvino"):
    keys = StaticKeyProvider({"digits": SECRET_KEY})
    loader = VersionLoader("digits", 1, path, keys, LoadOptions(), runtime=parse_runtime(runtime))
    return loader.load()


def child_runs(monkeypatch, code: str) -> None:
    """The conversion process runs `code` instead of the worker."""
    monkeypatch.setattr(conversion, "worker_argv", lambda: [sys.executable, "-c", code])


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("import os; os.abort()", "the OpenVINO conversion process died of signal SIGABRT"),
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
            "the OpenVINO conversion process died of signal SIGKILL (killed: out of memory?)",
        ),
        ("import sys; sys.exit(3)", "the OpenVINO conversion process exited with status 3"),
        (
            "import sys; sys.stdin.buffer.read(); sys.stdout.write('Segmentation fault' * 9)",
            "the OpenVINO conversion process answered something unreadable",
        ),
        (
            "import sys; sys.stdin.buffer.read()",
            "the OpenVINO conversion process ended without an answer",
        ),
    ],
    ids=["crash", "killed", "exit-status", "garbage", "silent"],
)
def test_a_conversion_process_that_ends_without_an_answer_ends_the_load_with_one_reason(
    digits_tree, monkeypatch, code, reason
):
    child_runs(monkeypatch, code)
    with pytest.raises(ConversionFailed) as failed:
        load(digits_tree)
    assert str(failed.value) == reason
    assert live_children() == []


def test_a_conversion_process_that_hangs_is_killed_at_its_timeout(digits_tree, monkeypatch):
    child_runs(monkeypatch, "import time; time.sleep(600)")
    monkeypatch.setattr(conversion, "TIMEOUT_SECONDS", 0.5)
    with pytest.raises(ConversionFailed) as failed:
        load(digits_tree)
    assert str(failed.value) == (
        "the OpenVINO conversion process stopped: it did not finish within 0.5 s"
    )
    assert live_children() == []


def test_a_stopping_server_ends_the_conversion_under_way(digits_tree, monkeypatch):
    child_runs(monkeypatch, "import sys, time; sys.stdin.buffer.read(); time.sleep(600)")
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            load(digits_tree)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    loading = threading.Thread(target=run)
    loading.start()
    deadline = time.monotonic() + GUARD_SECONDS
    while not (live_children() and conversion._live) and time.monotonic() < deadline:
        time.sleep(0.05)
    conversion.stop_conversions()
    loading.join(GUARD_SECONDS)
    assert [str(e) for e in outcome] == [
        "the OpenVINO conversion process stopped: the server is stopping"
    ]
    assert live_children() == []


SERVER = """
import sys, time
from sealserve.serving.runtimes.conversion import ConversionProcess
process = ConversionProcess.start("model m version 1")
print(process.pid, flush=True)
time.sleep(600)
"""


def test_the_conversion_process_dies_with_the_server():
    """A server killed outright (no handler runs) takes its conversion process with it."""
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        child = int(server.stdout.readline())
        assert _alive(child)
        server.send_signal(signal.SIGKILL)
        server.wait(GUARD_SECONDS)
        deadline = time.monotonic() + GUARD_SECONDS
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_where_no_process_can_start_the_conversion_runs_in_the_server(
    digits_tree, monkeypatch, caplog
):
    """Gramine's manifest forbids subprocesses (fork fails with EAGAIN): the model is
    converted in the server's own process instead, and served the same."""

    def refuse(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    with caplog.at_level(logging.INFO):
        servable = load(digits_tree)
    assert servable.runtime_labels == {"serving_default": "OpenVINO"}
    assert any("converting in this process" in r.getMessage() for r in caplog.records)
    assert any("converted in this process" in r.getMessage() for r in caplog.records)
    scores = servable.run("serving_default", {"image": np.zeros((2, 8, 8, 1), np.float32)})
    assert scores["scores"].shape == (2, 10)


# -- the messages --------------------------------------------------------------------------


def test_a_request_and_an_answer_round_trip_and_plaintext_chunks_are_wiped():
    cases = {"serving_default": [{"x": np.arange(6, dtype=np.float32).reshape(2, 3)}]}
    keys = ["serving_default", "classify"]
    request = ConversionRequest(["serve"], keys, "bf16", "latency", cases)
    chunk = bytearray(b"weights")
    stream = io.BytesIO()
    write_files(stream, ["serve"], ["variables"], [("variables/v", [chunk, b"more"])])
    assert chunk == bytearray(7)  # wiped once sent
    write_request(stream, request)
    stream.seek(0)
    header = read_header(stream)
    assert header["files"] == ["variables/v"] and header["directories"] == ["variables"]
    assert b"".join(read_stream(stream)) == b"weightsmore"
    got = read_request(stream, header["tags"])
    assert (got.tags, got.keys, got.precision, got.hint) == (["serve"], keys, "bf16", "latency")
    np.testing.assert_array_equal(
        got.cases["serving_default"][0]["x"], cases["serving_default"][0]["x"]
    )

    result = ConversionResult(
        signatures={
            "serving_default": SignatureConversion(
                blob=io.BytesIO(b"compiled"),
                inputs=(("x", 0),),
                outputs=(("y", 1),),
                references=[{"y": np.ones((2, 1), np.float32)}],
            ),
            "classify": SignatureConversion(reason="op ParseExampleV2"),
        },
        seconds={"load": 1.5},
    )
    answer = io.BytesIO()
    write_result(answer, result)
    answer.seek(0)
    back = read_result(answer)
    assert back.seconds == {"load": 1.5}
    assert back.signatures["classify"].reason == "op ParseExampleV2"
    converted = back.signatures["serving_default"]
    assert converted.blob is not None and converted.blob.getvalue() == b"compiled"
    assert converted.inputs == (("x", 0),)
    np.testing.assert_array_equal(converted.references[0]["y"], np.ones((2, 1), np.float32))


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x05\x00\x00\x00\x00\x00\x00\x00hello",
        b"\xff" * 8,
        b"\x02\x00\x00\x00\x00\x00\x00\x00{}",
    ],
)
def test_a_garbled_stream_is_refused(garbage):
    with pytest.raises((ProtocolError, EOFError)):
        read_header(io.BytesIO(garbage))


def test_object_arrays_are_never_pickled():
    request = ConversionRequest(
        ["serve"], ["k"], "fp32", "latency", {"k": [{"s": np.array([b"x"], object)}]}
    )
    with pytest.raises(ValueError, match="pickle"):
        write_request(io.BytesIO(), request)


# -- the process started ahead -------------------------------------------------------------


def test_the_first_load_takes_the_process_started_ahead(digits_tree, caplog):
    """`sealserve serve` starts a conversion process as it starts (its imports run beside
    the server's own): the first OpenVINO load converts there."""
    conversion.prestart()
    (spare,) = conversion._spare
    with caplog.at_level(logging.INFO):
        servable = load(digits_tree)
    assert servable.runtime_labels == {"serving_default": "OpenVINO"}
    assert conversion._spare == []
    assert any(f"converted in process {spare.pid}:" in r.getMessage() for r in caplog.records)
    assert live_children() == []


def test_a_process_started_ahead_that_no_load_takes_ends_after_the_initial_loads(
    openvino_models_for_server,
):
    """A server whose models all run on TensorFlow (the guess from the config was wrong)
    keeps no idle conversion process once its initial loads are done."""
    from sealserve.serving.model_config import ModelConfig
    from tests.harness import RunningServer, server_options

    conversion.prestart()
    assert len(live_children()) == 1
    models = [ModelConfig("digits", str(openvino_models_for_server))]
    running = RunningServer(server_options(models), StaticKeyProvider({"digits": SECRET_KEY}))
    try:
        assert conversion._spare == [] and live_children() == []
    finally:
        running.stop()


@pytest.fixture(scope="module")
def openvino_models_for_server(digits_tree) -> Path:
    return digits_tree.parent


@pytest.mark.parametrize(
    ("argv", "config", "expected"),
    [
        (["--runtime=openvino:bf16"], None, True),
        (["--runtime=OpenVINO"], None, True),
        ([], None, False),
        (["--runtime=tensorflow"], None, False),
        ([], 'config { name: "m" base_path: "/m" model_platform: "openvino:bf16" }', True),
        ([], "config { name: 'm' base_path: '/m' model_platform: 'OPENVINO' }", True),
        ([], 'config { name: "m" base_path: "/m" model_platform: "tensorflow" }', False),
        ([], 'config { name: "openvino" base_path: "/openvino" }', False),
    ],
)
def test_a_conversion_process_is_started_ahead_only_for_openvino_models(
    tmp_path, argv, config, expected
):
    from sealserve.cli import _may_serve_openvino, build_parser

    if config is not None:
        (tmp_path / "models.config").write_text(f"model_config_list {{ {config} }}")
        argv = [*argv, f"--model_config_file={tmp_path / 'models.config'}"]
    else:
        argv = [*argv, "--model_base_path=/m"]
    args = build_parser().parse_args(["serve", *argv])
    assert _may_serve_openvino(args) is expected


PROTECTED = """
import ctypes, os, resource
from sealserve.serving.runtimes.openvino_worker import _protect_this_process
_protect_this_process(os.getppid())
libc = ctypes.CDLL("libc.so.6")
print(libc.prctl(3, 0, 0, 0, 0), resource.getrlimit(resource.RLIMIT_CORE))
"""


def test_the_conversion_process_is_undumpable_before_it_reads_plaintext():
    """An exec makes a process dumpable again (the server's own PR_SET_DUMPABLE does not
    carry over): the conversion process turns it off itself; RLIMIT_CORE is inherited."""
    done = subprocess.run(
        ["prlimit", "--core=0:0", "--", sys.executable, "-c", PROTECTED],
        capture_output=True,
        text=True,
        timeout=GUARD_SECONDS,
    )
    assert done.stdout.split(maxsplit=1) == ["0", "(0, 0)\n"]


def test_a_compiled_model_that_cannot_be_imported_ends_the_load_with_one_reason(
    digits_tree, monkeypatch
):
    from sealserve.serving.runtimes import openvino

    real = openvino.read_result

    def garbled(stream):
        result = real(stream)
        for signature in result.signatures.values():
            if signature.blob is not None:
                signature.blob = io.BytesIO(b"not a compiled model")
        return result

    monkeypatch.setattr(openvino, "read_result", garbled)
    with pytest.raises(ConversionFailed) as failed:
        load(digits_tree)
    message = str(failed.value)
    assert message.startswith(
        "signature serving_default: OpenVINO cannot import the compiled model: "
    )
    assert "\n" not in message and live_children() == []


def test_files_sent_along_a_decryption_are_what_write_files_sends():
    """The tree is decrypted once, for the server's ram:// and the conversion process: each
    chunk is sent before the consumer gets it (and may overwrite it), each file ends with
    its empty frame, and the bytes on the wire are `write_files`' own."""
    files = [("a", [b"12", bytearray(b"34")]), ("b/c", [memoryview(b"5")])]
    expected = io.BytesIO()
    write_files(expected, ["serve"], ["b"], [(p, [bytes(c) for c in cs]) for p, cs in files])

    sent = io.BytesIO()

    def write(part) -> bool:
        part(sent)
        return True

    consumed = []
    for path, chunks in files_sent_along(write, ["serve"], ["b"], files):
        for chunk in chunks:
            consumed.append((path, bytes(chunk)))
            if isinstance(chunk, bytearray):
                chunk[:] = bytes(len(chunk))  # as the ram:// writer wipes what it wrote
    assert consumed == [("a", b"12"), ("a", b"34"), ("b/c", b"5")]
    assert sent.getvalue() == expected.getvalue()
