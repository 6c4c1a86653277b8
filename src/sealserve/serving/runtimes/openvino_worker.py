"""The conversion process of the OpenVINO runtime (`python -m` this module), and its messages.

The server (`conversion.ConversionProcess`) sends two messages on the child's stdin: the
SavedModel's files (decrypted plaintext, in chunks, as the server decrypts them:
`files_sent_along`), then the signatures to convert, the precision and hint, and the accuracy
gate's inputs. The child writes the files into its own `ram://` (never a file system), lets
`openvino.convert_model` load the model (meanwhile the server prepares the second message),
convert, compile and export each signature and answer the gate's inputs with TensorFlow, and
sends one answer on stdout: per
signature, its exported compiled model, port bindings and TensorFlow's answers, or why it
stays on TensorFlow; or why the whole model is refused. Then it exits.

Before it reads any plaintext, the child makes itself undumpable (an exec resets the
server's PR_SET_DUMPABLE; RLIMIT_CORE is inherited) and asks to be killed when the server's
loading thread ends (PR_SET_PDEATHSIG), and it moves stdout aside so that nothing a library
prints can garble the answer. Both sides' encoders live here, next to each other; this
module imports neither TensorFlow nor OpenVINO, so the server can import it cheaply.
"""

from __future__ import annotations

import ctypes
import io
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.serving.runtimes.conversion import (
    ProtocolError,
    read_array,
    read_header,
    read_stream,
    wipe,
    write_array,
    write_frame,
    write_header,
    write_stream,
)

# A SavedModel's plaintext: (directories, (relative path, chunks) per file), made on demand
FileSource = Callable[
    [], tuple[Sequence[str], Iterable[tuple[str, Iterable[bytes | bytearray | memoryview]]]]
]
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_DUMPABLE = 4


@dataclass
class ConversionRequest:
    """What to convert: signature `keys` of the MetaGraph `tags`, at `precision` with the
    performance `hint`; `cases[key]`: the inputs TensorFlow answers for its accuracy gate.
    (`tags` travel with the files, the rest after them: see `write_files`.)"""

    tags: Sequence[str]
    keys: Sequence[str]
    precision: str
    hint: str
    cases: Mapping[str, Sequence[Mapping[str, np.ndarray]]] = field(default_factory=dict)


@dataclass
class SignatureConversion:
    """One signature converted (`blob`: OpenVINO's export of its compiled model, its port
    per alias, TensorFlow's answers to its cases), or why not (`reason`)."""

    reason: str = ""
    blob: io.BytesIO | None = None
    inputs: tuple[tuple[str, int], ...] = ()
    outputs: tuple[tuple[str, int], ...] = ()
    references: list[dict[str, np.ndarray]] = field(default_factory=list)


@dataclass
class ConversionResult:
    signatures: dict[str, SignatureConversion] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # per step, for the load's log


# -- the server's side ---------------------------------------------------------------------


def write_files(
    stream: IO[bytes],
    tags: Sequence[str],
    directories: Sequence[str],
    files: Iterable[tuple[str, Iterable[bytes | bytearray | memoryview]]],
) -> None:
    """The first message: the SavedModel's files, each as a stream of its chunks (bytearrays
    are wiped once sent). The child loads the model while the request (`write_request`)
    is still being prepared."""
    files = list(files)
    write_header(
        stream,
        {"tags": list(tags), "directories": list(directories), "files": [p for p, _ in files]},
    )
    for _, chunks in files:
        write_stream(stream, chunks)
    stream.flush()


def files_sent_along(
    write: Callable[[Callable[[IO[bytes]], None]], bool],
    tags: Sequence[str],
    directories: Sequence[str],
    files: Iterable[tuple[str, Iterable[bytes | bytearray | memoryview]]],
) -> list[tuple[str, Iterator[bytes | bytearray | memoryview]]]:
    """`files` as they were, each chunk also sent (`write`) as `write_files` would, as it
    is read: a tree decrypted once for the server's `ram://` and the conversion process.
    Each chunk is sent before it is handed on (the consumer may overwrite it)."""
    files = list(files)
    header = {"tags": list(tags), "directories": list(directories), "files": [p for p, _ in files]}
    write(lambda stream: write_header(stream, header))

    def frame(data: bytes | bytearray | memoryview, flush: bool = False) -> None:
        def send(stream: IO[bytes]) -> None:
            write_frame(stream, data)
            if flush:
                stream.flush()

        write(send)

    def tee(chunks: Iterable[bytes | bytearray | memoryview]) -> Iterator[Any]:
        for chunk in chunks:
            if len(chunk):
                frame(chunk)
            yield chunk
        frame(b"", flush=True)  # the file's end: the child writes it into its ram:// now

    return [(path, tee(chunks)) for path, chunks in files]


def write_request(stream: IO[bytes], request: ConversionRequest) -> None:
    """The second message: the signatures, precision, hint and the gate's inputs."""
    cases = {key: [sorted(inputs) for inputs in request.cases.get(key, ())] for key in request.keys}
    write_header(
        stream,
        {
            "keys": list(request.keys),
            "precision": request.precision,
            "hint": request.hint,
            "cases": cases,
        },
    )
    for key in request.keys:
        for inputs in request.cases.get(key, ()):
            for alias in sorted(inputs):
                write_array(stream, inputs[alias])
    stream.flush()


def read_result(stream: IO[bytes]) -> ConversionResult:
    """The child's answer; raises the SealserveError it reported."""
    header = read_header(stream)
    error = header.get("error")
    if error:
        raise SealserveError(str(error["message"]), code=Code[error["code"]])
    result = ConversionResult(seconds={k: float(v) for k, v in header["seconds"].items()})
    for key, said in header["signatures"].items():
        if said.get("reason"):
            result.signatures[key] = SignatureConversion(reason=str(said["reason"]))
            continue
        blob = io.BytesIO()  # what the CPU plugin imports from, with no copy before
        for chunk in read_stream(stream):
            blob.write(chunk)
            wipe(chunk)
        references = [
            {alias: read_array(stream) for alias in aliases} for aliases in said["references"]
        ]
        result.signatures[key] = SignatureConversion(
            blob=blob,
            inputs=tuple((str(a), int(i)) for a, i in said["inputs"]),
            outputs=tuple((str(a), int(i)) for a, i in said["outputs"]),
            references=references,
        )
    return result


# -- the child's side ----------------------------------------------------------------------


def read_request(stream: IO[bytes], tags: Sequence[str]) -> ConversionRequest:
    """The second message (`write_request`), with the gate's inputs."""
    header = read_header(stream)
    cases = {
        key: [{alias: read_array(stream) for alias in aliases} for aliases in key_cases]
        for key, key_cases in header["cases"].items()
    }
    return ConversionRequest(tags, header["keys"], header["precision"], header["hint"], cases)


def write_result(stream: IO[bytes], result: ConversionResult) -> None:
    said: dict[str, Any] = {}
    for key, signature in result.signatures.items():
        if signature.blob is None:
            said[key] = {"reason": signature.reason or "not converted"}
        else:
            said[key] = {
                "inputs": signature.inputs,
                "outputs": signature.outputs,
                "references": [sorted(answer) for answer in signature.references],
            }
    write_header(stream, {"seconds": result.seconds, "signatures": said})
    for signature in result.signatures.values():
        if signature.blob is not None:
            write_stream(stream, [signature.blob.getbuffer()])
            for answer in signature.references:
                for alias in sorted(answer):
                    write_array(stream, answer[alias])
    stream.flush()


def write_error(stream: IO[bytes], error: SealserveError) -> None:
    write_header(stream, {"error": {"message": str(error), "code": error.code.name}})
    stream.flush()


def _protect_this_process(server: int) -> None:
    """Undumpable, and killed when the server's loading thread (or the server) ends."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != server:  # the server died before the request above took effect
        os._exit(1)


def main(argv: Sequence[str] = ()) -> int:
    if sys.platform.startswith("linux") and argv:
        _protect_this_process(int(argv[0]))
    # Ctrl-C reaches the whole process group: the server handles it, and ends this process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the answer goes to the original stdout; anything printed by a library goes to stderr
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = os.fdopen(0, "rb")
    try:
        result = _convert(requests)
    except (EOFError, ProtocolError, BrokenPipeError):
        return 1  # the server went away, or never sent a request: no one to answer
    except SealserveError as exc:
        write_error(answer, exc)
        return 1
    except Exception as exc:  # a bug or an unexpected library failure: one line for the server
        write_error(answer, InvalidArgument(f"the conversion failed: {type(exc).__name__}: {exc}"))
        return 1
    write_result(answer, result)
    answer.close()
    os._exit(0)  # at once: TensorFlow's teardown would only keep the load waiting


def _convert(requests: IO[bytes]) -> ConversionResult:
    from sealserve.serving.memory_load import files_in_memory
    from sealserve.serving.runtimes import openvino
    from sealserve.serving.tensorflow_runtime import import_tensorflow

    import_tensorflow()  # before the request: overlaps the server's start and decryption
    openvino.import_openvino()
    header = read_header(requests)
    tags = header["tags"]
    files = ((path, read_stream(requests)) for path in header["files"])
    with files_in_memory(header["directories"], files) as root:
        return openvino.convert_model(root, tags, lambda: read_request(requests, tags))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
