"""What Python gRPC alone costs a served request: a PredictionService with no model behind it.

It answers TF Serving's Predict over the same mutual TLS as `sealserve serve`, with stock
`grpcio` and TF Serving's protos: the request is received and parsed, each input's bytes are
read into a numpy array (as every server must before it can run a model), and a prepared
answer of the model's output shape is sent. Driven by the same load generator as the real
servers, its rate is the most a served model could reach on this machine were its run free;
`openvino_runtime.py` combines it with the in-process rate into the limit a served model can
reach here (served time = run time + this floor).

Usage: .venv/bin/python benchmarks/grpc_floor.py PORT CERT_DIR OUTPUT_NAME DIM,DIM,...
       (CERT_DIR as `make_twoway` writes it: server/, ca_cert.pem)
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np


def serve(port: int, certs: Path, output: str, shape: list[int]) -> None:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from sealserve.serving.tensor_proto import from_numpy

    answer = predict_pb2.PredictResponse()
    answer.outputs[output].CopyFrom(from_numpy(np.zeros(shape, np.float32)))

    class NoModel(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802
            for tensor in request.inputs.values():
                np.frombuffer(tensor.tensor_content, np.float32)
            answer.model_spec.CopyFrom(request.model_spec)
            return answer

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(NoModel(), server)
    credentials = grpc.ssl_server_credentials(
        [
            (
                (certs / "server" / "key.pem").read_bytes(),
                (certs / "server" / "cert.pem").read_bytes(),
            )
        ],
        root_certificates=(certs / "ca_cert.pem").read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=None)


if __name__ == "__main__":
    port, certs, output, dims = sys.argv[1:5]
    serve(int(port), Path(certs), output, [int(d) for d in dims.split(",")])
