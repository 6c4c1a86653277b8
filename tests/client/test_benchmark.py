"""The benchmark client (`sealserve client`, `resnet_client_grpc`) against real servers on
loopback: the seed's exact output lines, REST and gRPC, plaintext / one-way / mutual TLS,
errors counted by status code, interruption, images, and the installed seed-style script."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sealserve.client.benchmark import (
    BenchmarkConfig,
    build_seed_parser,
    config_from_args,
    input_array,
    load_image,
    run,
)
from sealserve.errors import InvalidArgument, NotFound, SealserveError

pytest_plugins = ["tests.client"]

QUERY = re.compile(
    r"query: (secure|insecure) channel, task (\d+), batch (\d+), loop_idx (\d+), "
    r"latency\(ms\) (\d+\.\d), tps: (\d+\.\d)"
)
SUMMARY = re.compile(
    r"summary: cnum (\d+), batch (\d+), e2e time\(s\) (\S+), average latency\(ms\) (\S+), "
    r"tps: (\S+)"
)
LATENCIES = re.compile(r"latency\(ms\): min [\d.]+, p50 [\d.]+, p90 [\d.]+, p99 [\d.]+, max [\d.]+")
TINY = ("--shape", "8,8,3")


def bench(*argv: str, out: io.StringIO | None = None, on_start=None) -> tuple[int, str, str]:
    args = build_seed_parser().parse_args(list(argv))
    out = out if out is not None else io.StringIO()
    err = io.StringIO()
    code = run(args, out=out, err=err, on_start=on_start)
    return code, out.getvalue(), err.getvalue()


def grpc_url(server) -> str:
    return f"127.0.0.1:{server.grpc_port}"


def query_lines(out: str) -> list[re.Match[str]]:
    lines = [line for line in out.splitlines() if line.startswith("query:")]
    matches = [QUERY.fullmatch(line) for line in lines]
    assert all(matches), lines
    return matches  # type: ignore[return-value]


def python_str_float(text: str) -> float:
    """The seed prints the summary numbers with str(float); check that form exactly."""
    value = float(text)
    assert str(value) == text
    return value


class StopAfter(io.StringIO):
    """Output that stops the run (as Ctrl-C would) once `count` query lines were written
    (and, with `tasks`, at least one by each of that many tasks), optionally running `probe`
    at that moment."""

    def __init__(self, count: int, probe=None, tasks: int = 0) -> None:
        super().__init__()
        self.count, self.seen, self.probe, self.stopper = count, 0, probe, None
        self.tasks, self.tasks_seen = tasks, set()
        self.probed, self.stopped = None, False

    def write(self, text: str) -> int:
        if text.startswith("query:"):
            self.seen += 1
            self.tasks_seen.add(re.search(r"task (\d+)", text)[1])
            ready = self.seen >= self.count and len(self.tasks_seen) >= self.tasks
            if ready and not self.stopped:
                self.stopped = True
                if self.probe is not None:
                    self.probed = self.probe()
                self.stopper.stop()
        return super().write(text)

    def attach(self, stopper) -> None:
        self.stopper = stopper


# -- the seed's output -------------------------------------------------------------------------


def test_seed_lines_and_summary_over_plaintext_grpc(client_plain_server):
    code, out, err = bench(
        "-url", grpc_url(client_plain_server), "-cnum", "3", "-loop", "4", "-batch", "2", *TINY
    )
    assert code == 0, err
    lines = out.splitlines()
    queries = query_lines(out)
    # the warm-up prints nothing: exactly cnum x loop lines, each (task, loop_idx) once
    assert len(queries) == 12
    assert sorted((int(m[2]), int(m[4])) for m in queries) == [
        (task, k) for task in range(3) for k in range(4)
    ]
    assert {(m[1], m[3]) for m in queries} == {("insecure", "2")}
    summary = SUMMARY.fullmatch(lines[12])
    assert summary is not None, lines[12]
    assert summary[1] == "3" and summary[2] == "2"
    e2e, average, tps = (python_str_float(summary[i]) for i in (3, 4, 5))
    assert tps == pytest.approx(3 * 4 * 2 / e2e)
    latencies = [float(m[5]) for m in queries]
    assert average == pytest.approx(sum(latencies) / len(latencies), abs=0.051)
    assert LATENCIES.fullmatch(lines[13]), lines[13]
    assert lines[14:] == ["errors: 0"]


def test_rest_lines_over_plaintext(client_plain_server):
    code, out, _ = bench(
        "--rest",
        "-url",
        f"127.0.0.1:{client_plain_server.rest_port}",
        "-cnum",
        "2",
        "-loop",
        "3",
        *TINY,
    )
    assert code == 0
    assert len(query_lines(out)) == 6
    assert SUMMARY.fullmatch(out.splitlines()[6])


def test_json_summary(client_plain_server):
    code, out, _ = bench(
        "-url",
        grpc_url(client_plain_server),
        "-cnum",
        "2",
        "-loop",
        "5",
        "-batch",
        "3",
        "--json",
        *TINY,
    )
    assert code == 0
    (line,) = out.splitlines()  # no per-request lines with --json
    summary = json.loads(line)
    assert summary["protocol"] == "grpc" and summary["tls"] == "none"
    assert summary["model_name"] == "resnet50-v15-fp32"
    assert (summary["cnum"], summary["batch"], summary["loop"], summary["warmup"]) == (2, 3, 5, 5)
    assert summary["requests"] == summary["succeeded"] == 10
    assert summary["failed"] == 0 and summary["errors"] == {}
    assert summary["interrupted"] is False
    assert summary["tps"] == pytest.approx(10 * 3 / summary["e2e_time_s"])
    stats = summary["latency_ms"]
    assert list(stats) == ["min", "p50", "p90", "p99", "max"]
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert stats["min"] <= summary["average_latency_ms"] <= stats["max"]


def test_any_model_scalar_instances_and_a_version(client_plain_server):
    """Not only the ResNet interface: half_plus_two takes scalars (an empty instance shape)."""
    for protocol in ([], ["--rest", "-url", f"127.0.0.1:{client_plain_server.rest_port}"]):
        code, out, err = bench(
            "-url",
            grpc_url(client_plain_server),
            *protocol,
            "--model_name",
            "half_plus_two",
            "--model_version",
            "2",
            "--input_name",
            "x",
            "--shape=",
            "-batch",
            "4",
            "-cnum",
            "1",
            "-loop",
            "2",
            "--json",
        )
        assert code == 0, err
        assert json.loads(out)["succeeded"] == 2


def test_each_connection_is_its_own_tcp_connection(client_plain_server):
    """gRPC shares one TCP connection between same-target channels unless told otherwise;
    the seed's "concurrent connections" must really be connections."""
    port = client_plain_server.grpc_port
    # probed once every task has had an answer: each of its connections is then up
    out = StopAfter(4, probe=lambda: established_connections(port), tasks=4)
    code, _, _ = bench(
        "-url",
        grpc_url(client_plain_server),
        "-cnum",
        "4",
        "-loop",
        "1000",
        *TINY,
        out=out,
        on_start=out.attach,
    )
    assert code == 130
    assert out.probed >= 4


def established_connections(port: int) -> int:
    """Server-side sockets of `port` in state ESTABLISHED (Linux /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                    count += 1
    return count


# -- TLS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
@pytest.mark.parametrize("mode", ["one-way", "mutual"])
def test_tls(request, mode, protocol):
    tls = request.getfixturevalue(
        "client_oneway_server" if mode == "one-way" else "client_mtls_server"
    )
    if mode == "one-way":  # the seed's -crt server/cert.pem
        flags = ["-crt", str(tls.certs.server_cert)]
    else:
        certs = tls.certs
        flags = [
            "-ca",
            str(certs.ca_cert),
            "-crt",
            str(certs.client_cert),
            "-key",
            str(certs.client_key),
        ]
    where = (
        ["-url", tls.grpc_target] if protocol == "grpc" else ["--rest", "-url", tls.rest_address]
    )
    code, out, err = bench(*where, *flags, "-cnum", "2", "-loop", "3", "--json", *TINY)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["protocol"], summary["tls"]) == (protocol, mode)
    assert summary["succeeded"] == 6 and summary["failed"] == 0
    if protocol == "rest":
        assert summary["target"].startswith("https://")


def test_secure_channel_lines(client_mtls_server):
    certs = client_mtls_server.certs
    code, out, _ = bench(
        "-url",
        client_mtls_server.grpc_target,
        "--ca",
        str(certs.ca_cert),
        "--cert",
        str(certs.client_cert),
        "--key",
        str(certs.client_key),
        "-cnum",
        "1",
        "-loop",
        "2",
        *TINY,
    )
    assert code == 0
    assert [m[1] for m in query_lines(out)] == ["secure", "secure"]


@pytest.mark.parametrize("warmup", ["5", "0"])  # told by the warm-up, or by the run itself
@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_mutual_tls_server_refuses_a_client_without_certificate(
    client_mtls_server, protocol, warmup
):
    where = (
        ["-url", client_mtls_server.grpc_target]
        if protocol == "grpc"
        else ["--rest", "-url", client_mtls_server.rest_address]
    )
    message = r"requires a client certificate \(mutual TLS\): give -crt and -key"
    with pytest.raises(SealserveError, match=message):
        bench(
            *where,
            "-ca",
            str(client_mtls_server.certs.ca_cert),
            "-cnum",
            "1",
            "-loop",
            "2",
            "--warmup",
            warmup,
            *TINY,
        )


# -- failures and interruption -----------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_failed_requests_are_counted_by_code(client_plain_server, protocol):
    where = (
        ["-url", grpc_url(client_plain_server)]
        if protocol == "grpc"
        else ["--rest", "-url", f"127.0.0.1:{client_plain_server.rest_port}"]
    )
    code = {"grpc": "NOT_FOUND", "rest": "HTTP 404"}[protocol]
    args = [*where, "--model_name", "nope", "--warmup", "0", "-cnum", "3", "-loop", "2", *TINY]
    exit_code, out, err = bench(*args)
    assert exit_code == 1
    lines = out.splitlines()
    assert not query_lines(out)
    assert SUMMARY.fullmatch(lines[0])
    assert lines[0].endswith("average latency(ms) nan, tps: 0.0")
    assert lines[1:] == [f"errors: 6 ({code}: 6)"]
    # each distinct error is shown once, on stderr
    assert err.splitlines() == [
        next(line for line in err.splitlines() if line.startswith("error: task"))
    ]
    assert f"{code}: Servable not found for request: Latest(nope)" in err
    exit_code, out, _ = bench(*args, "--json")
    summary = json.loads(out)
    assert exit_code == 1
    assert summary["errors"] == {code: 6} and summary["failed"] == 6 and summary["succeeded"] == 0
    assert summary["average_latency_ms"] is None and summary["latency_ms"] is None


def test_a_run_whose_warm_up_fails_stops_with_the_error(client_plain_server):
    with pytest.raises(SealserveError) as raised:
        bench("-url", grpc_url(client_plain_server), "--model_name", "nope", "-cnum", "2", *TINY)
    assert str(raised.value) == (
        "every warm-up request failed: NOT_FOUND: Servable not found for request: Latest(nope)"
    )


def test_interrupted_finite_run_prints_the_summary_so_far_and_exits_130(client_plain_server):
    out = StopAfter(7)
    code, text, err = bench(
        "-url",
        grpc_url(client_plain_server),
        "-cnum",
        "2",
        "-loop",
        "100000",
        *TINY,
        out=out,
        on_start=out.attach,
    )
    assert code == 130
    # requests in flight when it stopped are dropped: the summary covers the printed ones
    assert len(query_lines(text)) == 7
    summary = SUMMARY.fullmatch(text.splitlines()[7])
    assert summary is not None
    assert float(summary[5]) == pytest.approx(7 / float(summary[3]))
    assert err.strip() == "stopped by SIGINT after 7 timed requests"


def test_interrupting_an_endless_run_is_its_normal_end(client_plain_server):
    out = StopAfter(5)
    code, text, _ = bench(
        "-url",
        grpc_url(client_plain_server),
        "-cnum",
        "2",
        "-loop",
        "0",
        *TINY,
        out=out,
        on_start=out.attach,
    )
    assert code == 0  # like ping: Ctrl-C ends a -loop 0 run; 0 when every request succeeded
    assert len(query_lines(text)) == 5


def test_the_installed_seed_script_and_ctrl_c(client_oneway_server):
    """`resnet_client_grpc` with the seed's single-dash flags (one-way TLS with -crt), run
    until interrupted, then SIGINT: the summary so far and exit status 0."""
    script = Path(sys.executable).parent / "resnet_client_grpc"
    assert script.exists(), "pip install -e . creates the console script"
    command = [
        str(script),
        "-url",
        client_oneway_server.grpc_target,
        "-crt",
        str(client_oneway_server.certs.server_cert),
        "-cnum",
        "2",
        "-loop",
        "0",
        "-batch",
        "2",
        *TINY,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # as the seed's scripts run it (python -u)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        seen = []
        while len(seen) < 5:
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert len(seen) == 5, err
    out = "".join(seen) + rest
    assert process.returncode == 0, err
    queries = query_lines(out)
    assert {(m[1], m[3]) for m in queries} == {("secure", "2")}
    summary = [line for line in out.splitlines() if line.startswith("summary:")]
    assert len(summary) == 1 and SUMMARY.fullmatch(summary[0])
    assert "Traceback" not in err
    assert "stopped by SIGINT" in err


# -- options -----------------------------------------------------------------------------------


def config(*argv: str) -> BenchmarkConfig:
    return config_from_args(build_seed_parser().parse_args(list(argv)))


def test_seed_defaults_and_tls_rule(tmp_path):
    default = config()
    assert (default.target, default.batch, default.cnum, default.loop) == (
        "localhost:8500",
        1,
        16,
        200,
    )
    assert default.tls is None and default.model_name == "resnet50-v15-fp32"
    assert default.shape == (224, 224, 3) and default.input_name == "input"
    pem = {name: tmp_path / f"{name}.pem" for name in ("ca", "crt", "key")}
    for name, path in pem.items():
        path.write_text(name)
    one_way = config("-crt", str(pem["crt"]))  # the seed: the server's certificate as root
    assert one_way.tls.root == b"crt" and not one_way.tls.mutual
    with_ca = config("--ca", str(pem["ca"]))
    assert with_ca.tls.root == b"ca" and not with_ca.tls.mutual
    mutual = config("-ca", str(pem["ca"]), "-crt", str(pem["crt"]), "-key", str(pem["key"]))
    assert (mutual.tls.root, mutual.tls.cert_chain, mutual.tls.private_key) == (
        b"ca",
        b"crt",
        b"key",
    )
    assert "key" not in repr(mutual.tls).replace("key=", "").replace("key.pem", "")
    with pytest.raises(InvalidArgument, match="-key needs -crt"):
        config("-key", str(pem["key"]))
    with pytest.raises(InvalidArgument, match="needs -key"):
        config("-ca", str(pem["ca"]), "-crt", str(pem["crt"]))
    with pytest.raises(NotFound, match="not found"):
        config("-crt", str(tmp_path / "missing.pem"))
    with pytest.raises(InvalidArgument, match="http://"):
        config("--rest", "-url", "http://localhost:8501", "-crt", str(pem["crt"]))
    assert config("--rest").target == "http://localhost:8501"
    assert config("--rest", "-crt", str(pem["crt"]), "-url", "h").target == "https://h:8501"
    with pytest.raises(SystemExit):
        build_seed_parser().parse_args(["-cnum", "0"])


def test_random_input_is_the_seeds():
    values = input_array(BenchmarkConfig("x", batch=3, shape=(4, 5, 3)))
    assert values.shape == (3, 4, 5, 3)
    assert values.min() >= 0 and values.max() <= 254


def test_images_are_decoded_resized_and_cropped(tmp_path, client_plain_server):
    from PIL import Image

    picture = np.zeros((20, 40, 3), np.uint8)  # wide: left half red, right half blue
    picture[:, :20] = (255, 0, 0)
    picture[:, 20:] = (0, 0, 255)
    path = tmp_path / "picture.png"
    Image.fromarray(picture).save(path)
    pixels = load_image(str(path), (8, 8, 3))
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    # the centre square is kept (not squashed): red then blue, as RGB
    assert pixels[4, 0].tolist() == [255, 0, 0] and pixels[4, 7].tolist() == [0, 0, 255]
    assert load_image(str(path), (4, 4, 1)).shape == (4, 4, 1)
    batch = input_array(BenchmarkConfig("x", batch=2, shape=(8, 8, 3), image=str(path)))
    assert batch.shape == (2, 8, 8, 3) and (batch[0] == batch[1]).all()
    code, out, err = bench(
        "-url",
        grpc_url(client_plain_server),
        "-img",
        str(path),
        "-batch",
        "2",
        "-cnum",
        "1",
        "-loop",
        "2",
        *TINY,
    )
    assert code == 0, err
    assert len(query_lines(out)) == 2
    (tmp_path / "not-an-image.png").write_text("hello")
    with pytest.raises(InvalidArgument, match="not an image"):
        load_image(str(tmp_path / "not-an-image.png"), (8, 8, 3))
    with pytest.raises(InvalidArgument, match="HEIGHT,WIDTH,3"):
        load_image(str(path), (8, 8))


# -- the picture of a run (--plot) -------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_draws_the_latency_distribution_and_throughput(client_plain_server, tmp_path, suffix):
    figure = tmp_path / f"run{suffix}"
    code, out, _ = bench(
        "-url", grpc_url(client_plain_server), "-cnum", "2", "-loop", "20", "--quiet",
        "--plot", str(figure), *TINY,
    )  # fmt: skip
    assert code == 0 and "summary:" in out
    data = figure.read_bytes()
    if suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    else:
        text = data.decode()
        assert text.lstrip().startswith("<?xml") and "<svg" in text
        assert "latency distribution" in text and "throughput over the run" in text


def test_plot_refuses_an_unknown_format_before_running(client_plain_server, tmp_path):
    with pytest.raises(SealserveError, match=r"\.png or \.svg"):
        bench("-url", grpc_url(client_plain_server), "--plot", str(tmp_path / "x.gif"), *TINY)
    assert not (tmp_path / "x.gif").exists()
