"""Progress bars write whole lines every few percent when the stream is not a terminal."""

from __future__ import annotations

import io

from tqdm import tqdm

from stages.common.progress import LOG_STEP_PERCENT, LogLines, progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_one_line_per_step_and_no_carriage_returns():
    buf = io.StringIO()
    with progress(total=200, desc="work", unit="it", file=buf) as bar:
        assert isinstance(bar, LogLines)
        for _ in range(200):
            bar.update(1)
            bar.set_postfix(loss=0.5)
    text = buf.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert len(lines) == 100 // LOG_STEP_PERCENT
    assert lines[0].startswith("work:  10%") and lines[-1].startswith("work: 100%")
    assert "200/200" in lines[-1] and "loss=0.5" in lines[-1]


def test_an_unfinished_bar_reports_where_it_stopped_and_resume_starts_there():
    buf = io.StringIO()
    bar = progress(total=50, initial=20, desc="train", file=buf)
    bar.update(3)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert lines[-1].startswith("train:  46%") and "23/50" in lines[-1]


def test_iterables_disabled_bars_and_terminals():
    buf = io.StringIO()
    assert list(progress(range(3), desc="it", file=buf)) == [0, 1, 2]
    assert buf.getvalue().count("\n") == 3
    quiet = io.StringIO()
    with progress(total=5, file=quiet, disable=True) as bar:
        bar.update(5)
    assert quiet.getvalue() == ""
    tty = _Tty()
    bar = progress(total=5, file=tty)
    assert type(bar) is tqdm
    bar.close()
