"""Files of an experiment's run folder.

Writes never leave half a file: checkpoints, JSON and PNG figures go to a temporary file
created exclusively in the folder (an unpredictable name, never through a link planted there)
and are renamed over the target; the temporary is removed on every exit path, and a full disk
is reported in one line naming the file. A run holds a lock on its folder for its whole life,
so a second process cannot write into it. Files that runs share are untrusted: checkpoints
load with weights_only=True and JSON or data files are read only when they are regular files
of a bounded size."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import json
import os
import pickle
import re
import stat
import tempfile
from typing import Any, BinaryIO, Callable, Iterator, List, Optional, Sequence, Type

import torch

from .errors import RunError, UsageError

# The temporary files of an interrupted write: ".NAME.<random>.tmp" (and "NAME.tmp-<pid>[.png]",
# as releases before 2026-12-02 named them).
_TEMPORARY = re.compile(r"^\.(?P<new>.+)\.[A-Za-z0-9_]+\.tmp$|^(?P<old>.+)\.tmp-\d+(\.png)?$")

JSON_SIZE_LIMIT = 64 << 20  # a metrics.json or config.json of a run is far smaller


def temporary_of(name: str) -> Optional[str]:
    """The file that `name` is a temporary of, or None when it is not one."""
    m = _TEMPORARY.match(name)
    return None if m is None else (m.group("new") or m.group("old"))


def _atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    folder = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:  # the file mkstemp created (O_EXCL), never reopened by name
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a link named `path` itself, never its target
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _write_error(e, path) from None
        raise


def _write_error(e: OSError, path: str) -> Exception:
    if e.errno == errno.ENOSPC:
        return RunError(f"no space left on device while writing {path}")
    if e.errno == errno.EDQUOT:
        return RunError(f"disk quota exceeded while writing {path}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RunError(f"cannot write {path}: permission denied")
    return RunError(f"cannot write {path}: {e.strerror or e}")


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file, then rename it over the target."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str) -> None:
    """Write text to a temporary file, then rename it over the target."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(obj: Any, path: str) -> None:
    """json.dump to a temporary file, then rename it over the target."""
    atomic_write_text(json.dumps(obj, indent=2), path)


def pyplot():
    """matplotlib.pyplot with the Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> str:
    """Save a figure as PNG through a temporary file and close it; returns the path."""
    try:
        _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        pyplot().close(fig)
    return path


# -- reading untrusted files -----------------------------------------------------------------

def check_readable_file(path: str, error: Type[Exception], limit: Optional[int] = None) -> os.stat_result:
    """The stat of `path` if it is a regular file this process may read (and at most `limit`
    bytes); else `error` with one line naming the file. A FIFO, a device such as /dev/zero or a
    folder is refused before it is opened (reading one would hang or never end)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except PermissionError:
        raise error(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} is not a regular file")
    if limit is not None and st.st_size > limit:
        raise error(f"{path} is {st.st_size:,} bytes, more than the {limit:,} such a file can be")
    return st


def open_readable(path: str, error: Type[Exception], limit: Optional[int] = None) -> BinaryIO:
    """open(path, "rb") after check_readable_file; a permission error is one line too."""
    check_readable_file(path, error, limit)
    try:
        return open(path, "rb")
    except PermissionError:
        raise error(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None


def read_json(path: str, error: Type[Exception] = RunError) -> Any:
    """A JSON file of a run folder: a regular file of at most JSON_SIZE_LIMIT bytes."""
    with open_readable(path, error, JSON_SIZE_LIMIT) as f:
        try:
            return json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise error(f"{path} is not valid JSON ({str(e).splitlines()[0]})") from None


def _legacy_numpy_globals() -> List[Any]:
    """What numpy's generator state in a checkpoint written before 2026-12-02 names: a uint32 array."""
    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1
        multiarray = importlib.import_module("numpy.core.multiarray")
    return [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_torch_load(path: str, what: str, error: Type[Exception] = RuntimeError) -> Any:
    """torch.load(path, weights_only=True): tensors, numbers, strings, lists, tuples and dicts
    only, so that a crafted file cannot run code. Raises `error` with one line naming the file
    (and, for a refused file, what it tried to call)."""
    check_readable_file(path, error)
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise error(f"{path} is not a {what} of rnnofrnns: it refers to {found.group(1)}, which a {what} "
                        "never holds; refused without running it") from None
        raise error(f"{path} is not a readable {what} (UnpicklingError: {_first_line(e)})") from None
    except PermissionError:
        raise error(f"cannot read {path}: permission denied") from None
    except Exception as e:  # truncated, or not a torch file
        raise error(f"{path} is not a readable {what} ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else ""


# -- run folders ------------------------------------------------------------------------------

@contextlib.contextmanager
def hold_run_folder(out: str, flag: str = "--out") -> Iterator[None]:
    """Create the run folder `out` (and missing parents) and lock it for this process while the
    block runs: a second process asking for the same folder gets a UsageError at once. On an
    error the folders this call created are removed again if they are still empty."""
    if out == "":
        raise UsageError(f"{flag} must name a folder, got ''")
    path = os.path.abspath(out)
    missing = []
    p = path
    while not os.path.isdir(p):
        if os.path.lexists(p):
            raise UsageError(f"{flag} {out}: {p} is a file, not a folder")
        missing.append(p)
        p = os.path.dirname(p)
    created: List[str] = []

    def remove_created() -> None:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(d)  # only when empty

    for d in reversed(missing):
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            pass
        except OSError as e:
            remove_created()
            why = "permission denied" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else (e.strerror or e)
            raise UsageError(f"{flag} {out}: cannot create {d}: {why}") from None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        remove_created()
        raise UsageError(f"{flag} {out} is in use by another run that has not finished; wait for it or choose "
                         "another folder") from None
    ok = False
    try:
        if not os.access(path, os.W_OK):
            raise UsageError(f"{flag} {out}: cannot write there: permission denied")
        yield
        ok = True
    finally:
        if not ok:
            remove_created()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def folder_entries(out: str) -> List[str]:
    return sorted(os.listdir(out)) if os.path.isdir(out) else []


def check_only_own_files(out: str, own: Sequence[str], what: str, flag: str = "--out") -> List[str]:
    """The entries of `out` that may be replaced by a new run of `what`: `own` files and their
    temporaries, each a regular file. Anything else (another command's files, a folder, a
    link) is a UsageError before anything is deleted."""
    entries = folder_entries(out)
    foreign = [e for e in entries if e not in own and temporary_of(e) not in own]
    if foreign:
        raise UsageError(f"{flag} {out} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, "
                         f"which a {what} run never writes; choose another folder")
    odd = [e for e in entries if not stat.S_ISREG(os.lstat(os.path.join(out, e)).st_mode)]
    if odd:
        raise UsageError(f"{flag} {out}: {', '.join(odd[:3])} is not a regular file (a folder or a link), which a "
                         f"{what} run never writes; choose another folder")
    return entries


def remove_entries(out: str, names: Sequence[str]) -> None:
    """Remove the named regular files of `out` (checked by check_only_own_files before); an
    entry that has since become something else is left alone."""
    for name in names:
        p = os.path.join(out, name)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(p).st_mode):
                os.remove(p)


@contextlib.contextmanager
def command_run_folder(out: str, command: str, own: Sequence[str]) -> Iterator[None]:
    """hold_run_folder for a command that replaces its own earlier run in `out`: the folder may
    hold only that command's files (check_only_own_files) and a metrics.json of that command."""
    with hold_run_folder(out):
        check_only_own_files(out, own, command)
        metrics = os.path.join(out, "metrics.json")
        if os.path.lexists(metrics):
            saved = read_json(metrics, UsageError)
            # (one written before 2026-12-02 names no command; its other files said whose it is)
            if not isinstance(saved, dict) or saved.get("command", command) != command:
                raise UsageError(f"--out {out} holds a metrics.json that is not of a {command} run; "
                                 "choose another folder")
        yield
