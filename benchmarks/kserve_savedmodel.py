"""A KServe `ModelServer` that serves a TensorFlow SavedModel through KServe's v1 REST
protocol: the reference server of `serving.py`.

KServe's Python model server has no TensorFlow runtime of its own (on Kubernetes, KServe runs
TensorFlow models in the TF Serving container), so this is the minimal custom model KServe's
documentation describes: a `kserve.Model` whose `load` calls `tf.saved_model.load` and whose
`predict` feeds the v1 body's `instances` to the `serving_default` signature and answers
`{"predictions": [...]}` (TF Serving's row format: one value per instance for a single
output, one object per instance otherwise). The same SavedModel, run by the same TensorFlow
call, behind KServe's HTTP stack (uvicorn, FastAPI, its data plane) instead of ours.

Settings, chosen for KServe's speed, and matching ours where they correspond: one uvicorn
worker (one process, like `sealserve serve`), uvloop (KServe's default when installed), no
per-request log lines (KServe's latency logging off, uvicorn's access log and the
`kserve.trace` timing log silenced; sealserve writes none either), KServe's gRPC server off
(it speaks the v2 protocol, not measured here). `predict` is synchronous, as in KServe's own
sklearn and xgboost servers: KServe then calls it on the event loop, which for a model this
small is faster than a hop to a thread pool.

It runs in the benchmark venv `.venv-bench` (`make bench-deps`), not in the project's:
kserve 0.21 requires protobuf < 7, the project's gRPC health checking protobuf >= 7.

Usage: .venv-bench/bin/python benchmarks/kserve_savedmodel.py --model_name NAME \
           --model_dir SAVED_MODEL_DIR --http_port PORT
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import kserve  # noqa: E402
import numpy as np  # noqa: E402
from kserve import model_server  # noqa: E402


class SavedModelPredictor(kserve.Model):
    """The `serving_default` signature of one SavedModel, for KServe's v1 protocol."""

    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        import tensorflow as tf

        self._loaded = tf.saved_model.load(self.model_dir)
        self._function = self._loaded.signatures["serving_default"]
        ((alias, spec),) = self._function.structured_input_signature[1].items()
        self._input, self._dtype = alias, spec.dtype.as_numpy_dtype
        self.ready = True
        return self.ready

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        instances = np.asarray(payload["instances"], dtype=self._dtype)
        outputs = {k: v.numpy() for k, v in self._function(**{self._input: instances}).items()}
        if len(outputs) == 1:
            (values,) = outputs.values()
            return {"predictions": values.tolist()}
        rows = len(instances)
        return {
            "predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(rows)]
        }


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", required=True, help="the SavedModel directory")
    args, _ = parser.parse_known_args()
    model = SavedModelPredictor(args.model_name, args.model_dir)
    server = kserve.ModelServer(
        http_port=args.http_port,
        workers=1,
        enable_grpc=False,
        enable_latency_logging=False,
    )
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
