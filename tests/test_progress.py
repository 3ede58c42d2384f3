"""Progress bars: drawn on a terminal with an estimate, silent otherwise and with --json."""

from __future__ import annotations

import io
import json
import sys

from modelzip.cli import main
from modelzip.progress import bar, shown
from modelzip.search.sensitivity import sensitivity
from modelzip.train import Trainer


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _terminal(monkeypatch):
    # patched in the test body: pytest re-installs its own capture between setup and call
    stream = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    return stream


def test_bar_is_drawn_on_a_terminal_with_a_time_estimate(monkeypatch):
    terminal = _terminal(monkeypatch)
    assert shown(True) and not shown(False)
    with bar("calibrate", 4, enabled=True) as advance:
        for _ in range(4):
            advance()
    text = terminal.getvalue()
    assert "calibrate" in text and "eta" in text and "4/4" in text


def test_training_and_sensitivity_show_progress_on_a_terminal(monkeypatch, lenet300, digits):
    terminal = _terminal(monkeypatch)
    Trainer(progress=True).fit(lenet300, digits.train, epochs=1, lr=1e-3, description="tune")
    out = terminal.getvalue()
    steps = len(digits.train)
    assert "tune" in out and f"{steps}/{steps}" in out and "eta" in out
    terminal.seek(0)
    terminal.truncate()
    sensitivity(lenet300, digits, sparsities=[0.5, 0.9], layers=["fc3"], progress=True)
    assert "sensitivity fc3 90%" in terminal.getvalue()


def test_nothing_is_drawn_when_not_a_terminal(monkeypatch, lenet300, digits):
    stream = io.StringIO()  # a pipe or a file: isatty() is False
    monkeypatch.setattr(sys, "stderr", stream)
    Trainer(progress=True).fit(lenet300, digits.train, epochs=1, lr=1e-3)
    with bar("x", 2, enabled=True) as advance:
        advance(2)
    assert stream.getvalue() == ""


def test_json_mode_keeps_stderr_quiet_even_on_a_terminal(monkeypatch, capsys, tmp_path):
    terminal = _terminal(monkeypatch)
    code = main(
        ["sensitivity", "zoo:lenet300", "--data", "digits", "--sparsities", "0.5", "--json"]
    )
    assert code == 0
    assert "layers" in json.loads(capsys.readouterr().out)
    assert terminal.getvalue() == ""
