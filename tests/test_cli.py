"""The `sealserve` command as a user runs it: flags mirroring gramine-sgx-pf-crypt, one clear
line and a non-zero exit for every error a user can cause, nothing half-written left behind."""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import stat
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from sealserve.cli import main
from sealserve.model_tree import MANIFEST_NAME, ProtectedTree
from sealserve.protected_files import ProtectedFileReader
from tests.protected_files.vectors import Case
from tests.testvectors import vector_cases

SEALSERVE = Path(sys.executable).parent / "sealserve"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sealserve: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


@pytest.fixture
def plain_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(1_000_000))
    return path


# -- keygen ------------------------------------------------------------------------------


def test_keygen_writes_16_private_bytes_and_refuses_to_overwrite(capsys, tmp_path):
    key = tmp_path / "keys" / "k"
    assert run(capsys, "keygen", "-w", key)[0] == 0
    first = key.read_bytes()
    assert len(first) == 16
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    code, _, err = run(capsys, "keygen", "-w", key)
    assert_one_line_error(code, err, "already exists", "--force")
    assert key.read_bytes() == first
    assert run(capsys, "keygen", "-w", key, "--force")[0] == 0
    assert key.read_bytes() != first
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


# -- encrypt / decrypt -------------------------------------------------------------------


def test_encrypt_binds_gramines_normalized_output_path(
    capsys, tmp_path, monkeypatch, key_file, plain_file, wrap_key
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "model").mkdir(parents=True)
    code, out, _ = run(
        capsys, "encrypt", "-w", key_file, "-i", plain_file, "-o", "./out//tmp/../model/x"
    )
    assert code == 0
    assert 'must contain this exact path: "out/model/x"' in out
    with ProtectedFileReader(tmp_path / "out/model/x", wrap_key, expected_path="out/model/x") as r:
        assert r.read_all() == plain_file.read_bytes()
        assert r.version == 2


def test_format_version_1_for_older_gramine(capsys, tmp_path, key_file, plain_file, wrap_key):
    out = tmp_path / "v1.enc"
    assert (
        run(
            capsys, "encrypt", "-w", key_file, "-i", plain_file, "-o", out, "--format-version", "1"
        )[0]
        == 0
    )
    with ProtectedFileReader(out, wrap_key) as reader:
        assert reader.version == 1


def test_decrypts_a_file_gramine_wrote_and_checks_its_path_like_dash_V(
    capsys, tmp_path, monkeypatch
):
    case = Case(vector_cases("public")[0].parent / "name_saved_model_pb")
    monkeypatch.chdir(tmp_path)
    shutil.copy(case.directory / "enc.bin", "saved_model.pb")
    shutil.copy(case.directory / "wrap-key", "key")
    code, out, _ = run(capsys, "decrypt", "-w", "key", "-i", "saved_model.pb", "-o", "plain", "-V")
    assert code == 0, out
    assert Path("plain").read_bytes() == case.plain
    code, _, err = run(
        capsys, "decrypt", "-w", "key", "-i", "saved_model.pb", "-o", "p2", "-V", "models/other.pb"
    )
    assert_one_line_error(code, err, "bound to path 'saved_model.pb'", "models/other.pb")
    assert not Path("p2").exists()


def test_directory_round_trip_and_verify(capsys, tmp_path, key_file):
    plain = tmp_path / "m"
    (plain / "variables").mkdir(parents=True)
    (plain / "saved_model.pb").write_bytes(os.urandom(70_000))
    (plain / "variables" / "variables.index").write_bytes(b"index")
    enc = tmp_path / "enc"
    code, out, _ = run(capsys, "encrypt", "-w", key_file, "-i", plain, "-o", enc)
    assert code == 0 and "encrypted 2 files" in out
    code, out, _ = run(capsys, "verify", "-w", key_file, enc)
    assert code == 0 and out.startswith("OK: model ")
    code, _, _ = run(capsys, "decrypt", "-w", key_file, "-i", enc, "-o", tmp_path / "dec", "-V")
    assert code == 0
    assert (tmp_path / "dec" / "saved_model.pb").read_bytes() == (
        plain / "saved_model.pb"
    ).read_bytes()


def test_verify_names_the_bad_file(capsys, tmp_path, key_file):
    plain = tmp_path / "m"
    plain.mkdir()
    (plain / "a.pb").write_bytes(b"a" * 5000)
    (plain / "b.pb").write_bytes(b"b" * 5000)
    enc = tmp_path / "enc"
    run(capsys, "encrypt", "-w", key_file, "-i", plain, "-o", enc)
    (enc / "b.pb").unlink()
    code, _, err = run(capsys, "verify", "-w", key_file, enc)
    assert_one_line_error(code, err, "'b.pb' is missing")


# -- bad input: one line, non-zero exit, nothing left behind -----------------------------


def test_wrong_key(capsys, tmp_path, key_file, plain_file):
    enc = tmp_path / "x.enc"
    run(capsys, "encrypt", "-w", key_file, "-i", plain_file, "-o", enc)
    other = tmp_path / "other-key"
    other.write_bytes(os.urandom(16))
    code, _, err = run(capsys, "decrypt", "-w", other, "-i", enc, "-o", tmp_path / "out")
    assert_one_line_error(code, err, "authentication failed", "x.enc")
    assert not (tmp_path / "out").exists()


def test_corrupted_file_leaves_no_partial_plaintext(capsys, tmp_path, key_file, plain_file):
    enc = tmp_path / "x.enc"
    run(capsys, "encrypt", "-w", key_file, "-i", plain_file, "-o", enc)
    raw = bytearray(enc.read_bytes())
    raw[-10] ^= 0xFF  # the last node: most of the plaintext is written before it fails
    enc.write_bytes(bytes(raw))
    code, _, err = run(capsys, "decrypt", "-w", key_file, "-i", enc, "-o", tmp_path / "out")
    assert_one_line_error(code, err, "authentication failed", "corrupted")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_truncated_file(capsys, tmp_path, key_file, plain_file):
    enc = tmp_path / "x.enc"
    run(capsys, "encrypt", "-w", key_file, "-i", plain_file, "-o", enc)
    enc.write_bytes(enc.read_bytes()[:8192])
    code, _, err = run(capsys, "decrypt", "-w", key_file, "-i", enc, "-o", tmp_path / "out")
    assert_one_line_error(code, err, "truncated")


def test_not_a_protected_file(capsys, tmp_path, key_file, plain_file):
    code, _, err = run(capsys, "decrypt", "-w", key_file, "-i", plain_file, "-o", tmp_path / "o")
    assert_one_line_error(code, err, "is not a protected file")


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_missing_input(capsys, tmp_path, key_file, command):
    code, _, err = run(
        capsys, command, "-w", key_file, "-i", tmp_path / "nope", "-o", tmp_path / "o"
    )
    assert_one_line_error(code, err, "nope not found")


def test_unreadable_input(capsys, tmp_path, key_file):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _, err = run(capsys, "encrypt", "-w", key_file, "-i", fifo, "-o", tmp_path / "o")
    assert_one_line_error(code, err, "not a regular file")


def test_bad_key_file(capsys, tmp_path, plain_file):
    short = tmp_path / "short"
    short.write_bytes(b"0123")
    code, _, err = run(capsys, "encrypt", "-w", short, "-i", plain_file, "-o", tmp_path / "o")
    assert_one_line_error(code, err, "16 raw bytes")
    code, _, err = run(
        capsys, "encrypt", "-w", tmp_path / "absent", "-i", plain_file, "-o", tmp_path / "o"
    )
    assert_one_line_error(code, err, "wrap key file", "not found")


def test_hex_key_file_is_accepted(capsys, tmp_path, plain_file, wrap_key):
    hex_key = tmp_path / "hex"
    hex_key.write_text(wrap_key.hex() + "\n")
    assert run(capsys, "encrypt", "-w", hex_key, "-i", plain_file, "-o", tmp_path / "o")[0] == 0
    ProtectedFileReader(tmp_path / "o", wrap_key).close()


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_existing_output_is_refused_and_kept(capsys, tmp_path, key_file, plain_file, command):
    source = plain_file
    if command == "decrypt":
        source = tmp_path / "x.enc"
        run(capsys, "encrypt", "-w", key_file, "-i", plain_file, "-o", source)
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep me")
    code, _, err = run(capsys, command, "-w", key_file, "-i", source, "-o", existing)
    assert_one_line_error(code, err, "already exists")
    assert existing.read_bytes() == b"keep me"


def test_output_in_a_missing_directory(capsys, tmp_path, key_file, plain_file):
    code, _, err = run(
        capsys, "encrypt", "-w", key_file, "-i", plain_file, "-o", tmp_path / "no" / "such" / "out"
    )
    assert_one_line_error(code, err, "does not exist")


# -- rekey -------------------------------------------------------------------------------


@pytest.fixture
def new_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "new-key"
    path.write_bytes(os.urandom(16))
    return path


def test_rekey_in_place_rewrites_only_the_metadata_node(
    capsys, tmp_path, key_file, new_key_file, plain_file
):
    enc = tmp_path / "x.enc"
    run(capsys, "encrypt", "-w", key_file, "-i", plain_file, "-o", enc)
    before = enc.read_bytes()
    assert (
        run(capsys, "rekey", "-w", key_file, "--new-key", new_key_file, "-i", enc, "-o", enc)[0]
        == 0
    )
    after = enc.read_bytes()
    assert after[4096:] == before[4096:] and after[:4096] != before[:4096]
    with ProtectedFileReader(enc, new_key_file.read_bytes()) as reader:
        assert reader.read_all() == plain_file.read_bytes()
    code, _, err = run(capsys, "decrypt", "-w", key_file, "-i", enc, "-o", tmp_path / "o")
    assert_one_line_error(code, err, "authentication failed")


def test_rekey_to_a_new_path_binds_that_path(capsys, tmp_path, key_file, new_key_file, plain_file):
    enc = tmp_path / "x.enc"
    run(capsys, "encrypt", "-w", key_file, "-i", plain_file, "-o", enc)
    out = tmp_path / "y.enc"
    assert (
        run(capsys, "rekey", "-w", key_file, "--new-key", new_key_file, "-i", enc, "-o", out)[0]
        == 0
    )
    assert out.read_bytes()[4096:] == enc.read_bytes()[4096:]
    ProtectedFileReader(out, new_key_file.read_bytes(), expected_path=str(out)).close()


def test_rekey_reencrypt_changes_every_node(capsys, tmp_path, key_file, new_key_file, plain_file):
    enc = tmp_path / "x.enc"
    run(capsys, "encrypt", "-w", key_file, "-i", plain_file, "-o", enc)
    out = tmp_path / "y.enc"
    code, _, _ = run(
        capsys,
        "rekey",
        "-w",
        key_file,
        "--new-key",
        new_key_file,
        "-i",
        enc,
        "-o",
        out,
        "--reencrypt",
    )
    assert code == 0
    old, new = enc.read_bytes(), out.read_bytes()
    assert all(old[i : i + 4096] != new[i : i + 4096] for i in range(0, len(old), 4096))
    with ProtectedFileReader(out, new_key_file.read_bytes()) as reader:
        assert reader.read_all() == plain_file.read_bytes()


def test_rekey_with_the_wrong_old_key_changes_nothing(
    capsys, tmp_path, key_file, new_key_file, plain_file
):
    enc = tmp_path / "x.enc"
    run(capsys, "encrypt", "-w", key_file, "-i", plain_file, "-o", enc)
    before = enc.read_bytes()
    code, _, err = run(
        capsys, "rekey", "-w", new_key_file, "--new-key", key_file, "-i", enc, "-o", enc
    )
    assert_one_line_error(code, err, "authentication failed")
    assert enc.read_bytes() == before


def test_rekey_tree(capsys, tmp_path, key_file, new_key_file):
    plain = tmp_path / "m"
    plain.mkdir()
    (plain / "saved_model.pb").write_bytes(os.urandom(30_000))
    run(capsys, "encrypt", "-w", key_file, "-i", plain, "-o", tmp_path / "enc")
    code, out, _ = run(
        capsys,
        "rekey",
        "-w",
        key_file,
        "--new-key",
        new_key_file,
        "-i",
        tmp_path / "enc",
        "-o",
        tmp_path / "enc2",
    )
    assert code == 0 and "rekeyed 1 files" in out
    ProtectedTree(tmp_path / "enc2", new_key_file.read_bytes()).verify()
    assert (tmp_path / "enc2" / MANIFEST_NAME).exists()


# -- the installed command ---------------------------------------------------------------


def test_console_script_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [SEALSERVE, "decrypt", "-w", tmp_path / "k", "-i", tmp_path / "x", "-o", tmp_path / "y"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("sealserve: error: ")
    assert "Traceback" not in result.stderr


def test_progress_bar_only_on_a_terminal(tmp_path, key_file, plain_file):
    # not a terminal: stderr stays clean
    result = subprocess.run(
        [SEALSERVE, "encrypt", "-w", key_file, "-i", plain_file, "-o", tmp_path / "a"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stderr == ""
    # a terminal: a progress bar on stderr, unless --quiet
    for extra, expect_bar in (([], True), (["--quiet"], False)):
        primary, secondary = pty.openpty()
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        out = tmp_path / f"b{len(extra)}"
        proc = subprocess.run(
            [SEALSERVE, "encrypt", "-w", key_file, "-i", plain_file, "-o", out, *extra],
            stderr=secondary,
            stdout=subprocess.DEVNULL,
        )
        os.close(secondary)
        try:
            shown = os.read(primary, 65536).decode(errors="replace")
        except OSError:
            shown = ""
        os.close(primary)
        assert proc.returncode == 0
        assert ("encrypt" in shown and "%" in shown) == expect_bar, shown


def test_certs_twoway_and_oneway_write_the_seeds_layout(capsys, tmp_path, key_file):
    code, out, _ = run(
        capsys,
        "certs",
        "twoway",
        "grpc.tf-serving.service.com",
        "client.local",
        "-o",
        tmp_path / "ssl_configure",
        "--san",
        "127.0.0.1",
        "--encrypt-ssl-cfg",
        key_file,
    )
    assert code == 0 and "--ssl_config_file" in out
    root = tmp_path / "ssl_configure"
    for name in (
        "ca_cert.pem",
        "ca_key.pem",
        "server/key.pem",
        "server/cert.pem",
        "client/key.pem",
        "client/cert.pem",
        "ssl.cfg",
    ):
        assert (root / name).is_file(), name
    assert (root / "ssl.cfg").read_bytes().startswith(b"GRAFS_PF")
    assert stat.S_IMODE((root / "server" / "key.pem").stat().st_mode) == 0o600
    code, out, _ = run(capsys, "certs", "oneway", "localhost", "-o", tmp_path / "oneway")
    assert code == 0 and b"client_verify: false" in (tmp_path / "oneway" / "ssl.cfg").read_bytes()
    # the hint names the flags of both servers that take these files (the key broker has no
    # --ssl_config_file)
    oneway = tmp_path / "oneway" / "server"
    assert f"--tls-cert {oneway / 'cert.pem'} --tls-key {oneway / 'key.pem'}" in out
    code, _, err = run(capsys, "certs", "oneway", "localhost", "-o", tmp_path / "oneway")
    assert_one_line_error(code, err, "already exists")


def test_output_cut_by_a_closed_pipe_exits_quietly_like_unix_tools(tmp_path):
    """`sealserve ... | head`: the reader went away, so no message, and 141 (128 + SIGPIPE)
    like `cat` killed by SIGPIPE, so `set -o pipefail` scripts see what they see elsewhere."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a byte
    try:
        result = subprocess.run(
            [SEALSERVE, "keygen", "-w", tmp_path / "k"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert result.stderr == ""
    assert (tmp_path / "k").exists()  # the work itself was done


def test_attest_verify_of_a_simulated_quote_without_its_root_says_what_is_wrong(tmp_path):
    """Without --root-ca, dcap-qvl fails a simulated quote with a cryptic CRL signature error;
    the command names the wrong root and the flag that fixes it, in one line."""
    sim, quote = tmp_path / "sim", tmp_path / "quote.bin"
    for argv in (
        ["sim", "init", sim],
        ["attest", "quote", "--attester", "sim", "--sim-dir", sim, "--report-data", "00"]
        + ["-o", quote],
    ):
        subprocess.run([SEALSERVE, *argv], check=True, capture_output=True)
    verify = [SEALSERVE, "attest", "verify", "--quote", quote]
    verify += ["--collateral", sim / "collateral.json"]
    result = subprocess.run(verify, capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "CRL" not in result.stderr and "Traceback" not in result.stderr
    assert "certificate chain leads to root CA" in result.stderr
    assert "not to the trust anchor, Intel's SGX root CA" in result.stderr
    assert "--root-ca SIM_DIR/root_ca.der" in result.stderr
    # with its root, the same quote verifies
    trusted = subprocess.run([*verify, "--root-ca", sim / "root_ca.der"], capture_output=True)
    assert trusted.returncode == 0, trusted.stderr
