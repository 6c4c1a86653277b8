"""`make demo` runs its steps for real and they succeed."""

from __future__ import annotations

from sealserve.tools import demo


def test_demo_steps_run_end_to_end(tmp_path, capsys):
    assert demo.main(["--workdir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert '{"predictions": [2.5, 3.0, 4.5]}' in out
    assert "(tensorflow-serving-api stubs): [2.5, 3.0, 4.5]" in out
    assert "a client without a certificate is refused" in out
    assert "version 2: END, authentication failed" in out
    assert "version 1: END, PERMISSION_DENIED: key broker denied" in out  # the modified server
    assert "allowed " in out and "denied " in out  # both decisions in the audit log
    assert "belongs elsewhere" in out  # the swapped file was caught and named
    assert "byte-identical to the original SavedModel" in out
    assert "Demo complete" in out
