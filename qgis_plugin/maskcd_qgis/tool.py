"""Run a maskcd command-line tool (``maskcd-map``, ``maskcd-batch``) as a subprocess, without QGIS or torch.

This module imports neither ``qgis`` nor ``torch``: the tools run in their own Python environment (a conda env or a
virtualenv), so QGIS's Python never loads torch. The tool's output (stdout and stderr merged) is read in a thread;
tqdm bars (``\\r``-updated, ``NN%|``) become progress values, other lines become log lines, and the tool's one-line
error (``maskcd-map: error: ...``) becomes the failure message. Cancelling ends the whole process group (the tool
and, for ``maskcd-batch``, its Dask workers): SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

#: Environment variable naming the folder holding the maskcd tools (the ``bin`` of their environment).
BIN_ENV = "MASKCD_BIN_DIR"
#: Environment variable giving the tools' PYTHONPATH (development checkouts); QGIS's own PYTHONPATH is never passed.
PYTHONPATH_ENV = "MASKCD_PYTHONPATH"
_PERCENT = re.compile(r"(\d{1,3})%\|")
_TQDM = re.compile(r"^[^|]{0,80}\d{1,3}%\|")
GRACE_S = 5.0


class ToolError(Exception):
    """The tool cannot be found, or it failed; the message is one line."""


def find_tool(name: str, configured: str | None = None) -> str:
    """The path of a maskcd tool.

    Args:
        name: ``maskcd-map`` or ``maskcd-batch``.
        configured: The plugin setting: the environment's ``bin`` folder (or the tool itself); empty → the
            ``MASKCD_BIN_DIR`` environment variable, then ``PATH``.

    Raises:
        ToolError: Not found, with what was searched and how to fix it.
    """
    exe = name + (".exe" if os.name == "nt" else "")
    for where in (configured, os.environ.get(BIN_ENV)):
        if not where:
            continue
        p = Path(where).expanduser()
        candidates = [p] if p.is_file() else [p / exe, p / "Scripts" / exe, p / "bin" / exe]
        for c in candidates:
            if c.is_file() and os.access(c, os.X_OK):
                return str(c)
        raise ToolError(f"{name} is not in {p}; set the maskcd tools folder (Processing ▸ Options ▸ Providers ▸ "
                        f"maskcd) to the bin folder of the environment where maskcd is installed")
    found = shutil.which(name)
    if found:
        return found
    raise ToolError(f"{name} is not on PATH; install maskcd in a Python environment and set the maskcd tools folder "
                    f"(Processing ▸ Options ▸ Providers ▸ maskcd) to its bin folder")


def tool_env() -> dict[str, str]:
    """The tools' environment: QGIS's, without its Python settings (``PYTHONHOME``/``PYTHONPATH`` would make the
    tools' interpreter load QGIS's modules); ``MASKCD_PYTHONPATH`` becomes the tools' ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
    if os.environ.get(PYTHONPATH_ENV):
        env["PYTHONPATH"] = os.environ[PYTHONPATH_ENV]
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return env


@dataclass
class ToolResult:
    """Outcome of :func:`run_tool`.

    Args:
        returncode: The exit status (negative: ended by a signal).
        canceled: The run was cancelled and its process group ended.
        error: The tool's one-line error (without the ``prog: error:`` prefix), or the last output line on a crash.
        lines: Every non-progress output line.
        pid: The tool's process id.
    """

    returncode: int
    canceled: bool = False
    error: str | None = None
    lines: list[str] = field(default_factory=list)
    pid: int = 0


def _reader(stream, out: queue.Queue) -> None:
    """Split the byte stream on ``\\r`` and ``\\n`` (tqdm redraws with ``\\r``) and queue the decoded pieces."""
    buf = b""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        buf += chunk
        parts = re.split(rb"[\r\n]", buf)
        buf = parts.pop()
        for part in parts:
            out.put(part.decode("utf-8", errors="replace"))
    if buf:
        out.put(buf.decode("utf-8", errors="replace"))
    out.put(None)


def _end_group(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """End the tool and every process it started (same process group / job)."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], capture_output=True, check=False)
        proc.wait(timeout=grace)
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:  # the Dask workers of maskcd-batch share the group; none may outlive the cancel
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_tool(cmd: list[str], *, on_line=None, on_progress=None, is_canceled=None, on_start=None, bar: str | None = None,
             poll_s: float = 0.1) -> ToolResult:
    """Run ``cmd`` to its end or until ``is_canceled()``; callbacks are called from the calling thread.

    Args:
        cmd: The command (first item the tool's path).
        on_line: ``f(text)`` for each output line that is not a progress bar.
        on_progress: ``f(percent)`` for each tqdm update (0–100 of the current bar).
        is_canceled: ``f() -> bool`` polled every ``poll_s`` seconds.
        on_start: ``f(pid)`` once the process runs.
        bar: Description of the tool's own tqdm bar (default: the tool's name, as ``maskcd-map`` labels its bar;
            ``maskcd-batch`` labels it ``sites``). Other bars (weights loading, ...) are neither progress nor log.

    Returns:
        The :class:`ToolResult`; a failure is not raised (see :attr:`ToolResult.error`).
    """
    kwargs: dict = {}
    if os.name == "nt":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        kwargs["start_new_session"] = True  # its own process group, so cancel reaches the Dask workers too
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=tool_env(), **kwargs)
    except OSError as err:
        raise ToolError(f"{cmd[0]} cannot be started ({err.strerror or err}); check the maskcd tools folder") from err
    if on_start:
        on_start(proc.pid)
    lines: queue.Queue = queue.Queue()
    thread = threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True)
    thread.start()
    prog = Path(cmd[0]).stem
    bar = bar or prog
    result = ToolResult(returncode=0, pid=proc.pid)
    done = False
    while not done:
        if is_canceled and is_canceled():
            _end_group(proc)
            result.canceled = True
            break
        try:
            text = lines.get(timeout=poll_s)
        except queue.Empty:
            continue
        while text is not None:
            _handle(text, prog, bar, result, on_line, on_progress)
            try:
                text = lines.get_nowait()
            except queue.Empty:
                break
        else:
            done = True
    result.returncode = proc.wait()
    thread.join(timeout=2)
    proc.stdout.close()
    if result.returncode != 0 and not result.canceled and result.error is None:
        tail = [line for line in result.lines if line.strip()]
        result.error = tail[-1].strip() if tail else f"{prog} ended with exit status {result.returncode}"
    return result


def _handle(text: str, prog: str, bar: str, result: ToolResult, on_line, on_progress) -> None:
    if _TQDM.match(text):
        match = _PERCENT.search(text)
        if match and on_progress and text.lstrip().startswith(bar):
            on_progress(min(100.0, float(match.group(1))))
        return
    if not text.strip():
        return
    result.lines.append(text)
    marker = f"{prog}: error: "
    if text.startswith(marker) and result.error is None:
        result.error = text[len(marker):].strip()
    if on_line:
        on_line(text)


def remove_partial(outdir: Path, *, remove_empty_root: bool = False) -> int:
    """Remove what a killed ``maskcd-batch`` run leaves half-written: per-site ``.tmp-*`` folders and the hidden
    temporaries of maskcd's atomic writes, ``.NAME.<tag>.tmp.EXT`` (merged GeoPackage, failures table, manifests,
    STAC JSON, VRTs; older versions named them ``.NAME.tmp-<pid>``). Finished sites (with a manifest) are complete
    and kept. Returns how many entries were removed."""
    if not outdir.is_dir():
        return 0
    removed = 0
    for pattern in ("*/.tmp-*", ".*.tmp*", "*/.*.tmp*", "stac_inputs/*/.*.tmp*"):
        for p in outdir.glob(pattern):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed += 1
    for site in [p for p in outdir.iterdir() if p.is_dir()]:
        if site.name != "stac_inputs" and not any(site.iterdir()):
            site.rmdir()  # a site folder created for a site that had not produced anything yet
    if remove_empty_root:
        leftovers = [p for p in outdir.iterdir() if p.name != ".maskcd-batch.lock"]
        if not leftovers:
            shutil.rmtree(outdir, ignore_errors=True)
    return removed
