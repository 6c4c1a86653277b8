"""`make demo` runs its steps for real and they succeed."""

from __future__ import annotations

from sealserve.tools import demo


def test_demo_steps_run_end_to_end(tmp_path, capsys):
    assert demo.main(["--workdir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "half_plus_two([1.0, 2.0, 5.0]) = [2.5, 3.0, 4.5]" in out
    assert "belongs elsewhere" in out  # the swapped file was caught and named
    assert "byte-identical to the original SavedModel" in out
    assert "Demo complete" in out
