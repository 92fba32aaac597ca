"""Progress of long loops: tqdm's bar on a terminal, occasional plain log lines anywhere else.

    for batch in progress_bar(loader, total=len(loader), desc="finetune epoch 1/3", unit="step"):
        ...

Every progress bar of the package comes from :func:`progress_bar`. On a terminal (stderr is a tty) it is
tqdm's bar, redrawn in place. When stderr is a file or a pipe (``make demo > log 2>&1``, a batch job), a bar
redrawn in place would put every refresh, carriage returns and all, into the log. There the bar draws
nothing; instead the logger ``affectmae.progress`` writes one plain line after each ``AFFECTMAE_PROGRESS_SECONDS``
seconds (default 30) of the loop and one when it ends, e.g.::

    12:00:31 INFO affectmae.progress: extract: 1200/4800 frame (25%), 00:30 elapsed, 40.0 frame/s

A loop that ends sooner writes nothing (the stages log their own summary lines).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Iterable

from tqdm import tqdm

log = logging.getLogger(__name__)

ENV_VAR = "AFFECTMAE_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0
_WITH_TOTAL = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {elapsed} elapsed, {rate_fmt}{postfix}"
_WITHOUT_TOTAL = "{desc}: {n_fmt} {unit}, {elapsed} elapsed, {rate_fmt}{postfix}"


class _Nowhere:
    """A file that drops what is written to it: where a plain bar sends tqdm's own drawing."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class PlainProgress(tqdm):
    """A tqdm bar that draws nothing and logs a plain line every ``every`` seconds and at the end (the end
    only when a line was due before, so short loops stay silent)."""

    def __init__(self, *args: Any, every: float = DEFAULT_SECONDS, **kwargs: Any):
        self._every, self._logged_n, self._closing = float(every), None, False
        self._last_log_t = time.time()  # tqdm draws once inside __init__ when there is no delay (every=0)
        kwargs.update(file=_Nowhere(), mininterval=every, maxinterval=max(every, 1e-3), delay=every, ncols=80,
                      dynamic_ncols=False, ascii=True)
        super().__init__(*args, **kwargs)
        self._last_log_t = self.start_t if hasattr(self, "start_t") else time.time()

    def plain_line(self) -> str:
        """The bar's state as one line of text (no bar drawing, no control characters)."""
        fmt = dict(self.format_dict)
        fmt["bar_format"] = _WITH_TOTAL if fmt.get("total") else _WITHOUT_TOTAL
        return " ".join(self.format_meter(**fmt).split())  # tqdm pads rates below 10 ("  8.40step/s")

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        now = time.time()
        if self._logged_n != self.n and (self._closing or now - self._last_log_t >= self._every):
            log.info("%s", self.plain_line())
            self._logged_n, self._last_log_t = self.n, now
        return True

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)  # shown with the next line, not a line of its own

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=False)

    def close(self) -> None:
        self._closing = True
        super().close()


def progress_seconds() -> float:
    """Seconds between plain progress lines: ``AFFECTMAE_PROGRESS_SECONDS``, else 30."""
    text = os.environ.get(ENV_VAR, "").strip()
    try:
        return max(0.0, float(text)) if text else DEFAULT_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", ENV_VAR, text, DEFAULT_SECONDS)
        return DEFAULT_SECONDS


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def progress_bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
                 show: bool = True, **kwargs: Any) -> tqdm:
    """A progress bar over ``iterable`` (or updated by hand with ``total``): tqdm's bar on a terminal, plain log
    lines elsewhere (see the module doc); ``show=False`` hides it (processes other than the main one, loops too
    short to matter). ``kwargs`` go to tqdm (``leave``, ``dynamic_ncols``...). ``bar.set_postfix(loss=...)``
    shows running values either way."""
    if not show:
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True)
    if stderr_is_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k in ("leave", "initial", "unit_scale", "postfix", "position")}
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, every=progress_seconds(), **kwargs)
