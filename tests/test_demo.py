"""`make demo` runs its steps for real and they succeed."""

from __future__ import annotations

import re

from examples import demo
from tests.test_docs_examples import listing_lines_not_printed, output_listing


def test_demo_steps_run_end_to_end(tmp_path, capsys):
    assert demo.main(["--workdir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    # one server, three models, keys from the KBS, mutual TLS
    assert "serving digits, half_plus_two, resnet50-v15-fp32: gRPC on 127.0.0.1:" in out
    assert ", mutual TLS" in out
    # half_plus_two over REST and gRPC
    assert '{"predictions": [2.5, 3.0, 4.5]}' in out
    assert "(tensorflow-serving-api stubs): [2.5, 3.0, 4.5]" in out
    assert "a client without a certificate is refused" in out
    # the held-out digits, classified over gRPC
    accuracy = re.search(r"accuracy on (\d+) held-out digits: ([0-9.]+) \((\d+) correct\)", out)
    assert accuracy, out
    images, value, correct = int(accuracy[1]), float(accuracy[2]), int(accuracy[3])
    assert images == 359
    assert value >= 0.95
    assert abs(value - correct / images) < 1e-3
    # the benchmark client's summary on ResNet-50
    assert re.search(
        r"summary: cnum 2, batch 1, e2e time\(s\) [0-9.]+, average latency\(ms\) [0-9.]+, "
        r"tps: [0-9.]+",
        out,
    ), out
    assert re.search(r"latency\(ms\): min [0-9.]+, p50 [0-9.]+", out)
    assert "\n  errors: 0\n" in out
    # a version under a key the server lacks is refused
    assert "version 2: END, authentication failed" in out
    # issue #16: verify before sending; an unattested server gets nothing; revocation
    assert "carries no claims from the given server CA (not attested)" in out
    assert "verified, then predicted: {" in out
    assert "half_plus_two: END, key revoked" in out
    # the modified server measures differently and refuses to start (before any key)
    measured = re.search(r"mr_enclave ([0-9a-f]{16})… instead of the pinned ([0-9a-f]{16})…", out)
    assert measured and measured[1] != measured[2]
    assert "an attested server runs only measured code, and environment variable PYTHONPATH" in out
    # the audit log: each model's key released to the pinned server, none to the modified one
    for name in ("half_plus_two", "digits", "resnet50-v15-fp32"):
        assert re.search(
            rf"allowed  sealserve/model-key/{name} +tee=sim mr_enclave={measured[2]}", out
        )
    assert f"mr_enclave={measured[1]}" not in out
    assert "belongs elsewhere" in out  # the swapped file was caught and named
    assert "byte-identical to the original SavedModel" in out
    # everything stopped
    assert "(stopped serve --model_config_file=" in out
    assert "(stopped kbs serve)" in out
    assert "Demo complete" in out
    # docs/demo.md shows some of these lines: they are what the demo prints
    as_make_demo_prints = out.replace(str(tmp_path / "demo"), ".demo")
    missing = listing_lines_not_printed(
        output_listing("docs/demo.md", "make demo"), as_make_demo_prints
    )
    assert not missing, f"docs/demo.md shows lines the demo does not print: {missing}\n{out}"
