"""Run untrusted Python in a sandboxed child process, and the ``code_exec`` reward built on it.

:func:`run_sandboxed` runs one program in a fresh interpreter (``python -I -S``: no user site,
no site-packages, ``PYTHON*`` variables ignored, so only the standard library is importable)
with a stripped environment, a fresh working folder and hard limits, and returns a
:class:`SandboxResult`. :func:`code_exec` is the reward factory: it runs a completion's code
against each row's tests and scores the fraction that pass.

Threat model: what stops what
=============================

Enforced by the kernel (hold even against native code):

- **CPU time**: ``RLIMIT_CPU`` (SIGXCPU at the limit, SIGKILL a second later).
- **Wall time**: the parent waits at most ``wall_seconds``, then SIGKILLs the child's whole
  process group (the child starts a new session, so the group is its own); the child also
  gets ``PR_SET_PDEATHSIG`` = SIGKILL, so it dies if the scoring thread dies.
- **Memory**: ``RLIMIT_AS`` (address space; Python raises MemoryError).
- **Output**: the parent reads at most ``max_output_bytes`` from each of stdout and stderr,
  then kills the group; nothing more is buffered.
- **Files written**: ``RLIMIT_FSIZE`` per file; ``RLIMIT_NOFILE`` open descriptors;
  ``RLIMIT_CORE`` = 0.
- **No child processes or threads**: ``RLIMIT_NPROC`` = 0 (counted per user, and ignored for
  root: so when rewardlab runs as root the child first drops to ``nobody``, which also means
  it cannot signal, ptrace or read the files of root's processes, nor write anywhere that is
  not world-writable). ``exec`` itself is not stopped by the kernel (only by the hook), but
  whatever is exec'd keeps every limit, namespace and the uid, and ``PR_SET_NO_NEW_PRIVS``
  stops setuid binaries regaining privileges.
- With ``unshare`` (see :func:`sandbox_isolation`): **no network** (an empty network
  namespace: only a loopback that is down; abstract unix sockets are per namespace too) and,
  with a private mount namespace, **a private file system view**: the working folder is a
  fresh ``tmpfs`` mounted on ``/tmp`` (``noexec,nosuid,nodev``, size ``disk_mb``; so no
  native code can be loaded from it), and every top-level folder except ``/usr``, ``/bin``,
  ``/sbin``, ``/lib*``, ``/proc``, ``/dev``, ``/sys`` (and ``/nix``, ``/gnu``) is covered by
  an empty read-only ``tmpfs`` (so ``/etc``, ``/home``, ``/root``, your project, ...), as is
  ``/dev/shm``; top-level files are covered by ``/dev/null``. The standard library stays
  reachable through folder descriptors opened before. The mounts die with the child. There
  is no PID namespace: ``/proc`` still shows other processes (their command lines, not
  their memory or environment, which need the same uid).

Enforced only by an audit hook (``sys.addaudithook``, installed before the program runs; it
cannot be removed from Python, but it is *not* a security boundary: native code, an
interpreter bug or a trick not listed here gets past it):

- ``open``/``os.*`` file events: reads only inside the working folder and the standard
  library (plus ``/dev/null``, ``/dev/zero``, ``/dev/urandom``), writes only inside the
  working folder; paths with ``..``, symlinks and hard links are refused.
- ``socket.*``, ``subprocess.Popen``, ``os.system``/``exec``/``spawn``/``posix_spawn``/
  ``fork``/``forkpty``, ``os.kill``/``killpg``, ``signal.pthread_kill``.
- ``ctypes`` (its import and every ``ctypes.*`` event), other native-code doors
  (``_testcapi``-style modules, ``sqlite3`` extensions, ``code.__new__``), loading an
  extension module from anywhere but the standard library, ``gc`` object walks (which could
  find the hook list), ``sys.settrace``/``setprofile``, and changing the ``__code__`` or
  ``__defaults__`` of the hook's path check.

Known holes in the hook layer: crafted bytecode (``marshal``) or any interpreter bug can
corrupt memory and switch the hook off; the kernel layer then still applies. Without
``unshare`` and when not root the child runs as your own user: the audit hook is then the
only thing between it and your files, your network and your processes.

Tests with asserts run in the same interpreter as the program, so the program can lie to them
(an object whose ``__eq__`` is always true, or digging the harness out of the stack); the
harness does catch exiting early (``sys.exit``, ``os._exit``) and printing a fake success.
Input/output cases are compared by the parent and are the robust choice when reward hacking
matters.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rewardlab.errors import ConfigError, DataError

if TYPE_CHECKING:
    # Type-only: builtin.py registers code_exec, so importing it here at runtime would be
    # circular; the helpers are imported inside the functions that use them.
    from rewardlab.rewards.builtin import RewardFn

__all__ = [
    "STATUSES",
    "CodeExecReward",
    "Isolation",
    "SandboxResult",
    "SandboxUnavailable",
    "code_exec",
    "extract_code",
    "run_sandboxed",
    "sandbox_isolation",
]

STATUSES = (
    "ok",  # exited 0 (and, with a check, the check ran to its end)
    "failed",  # the check raised AssertionError: a wrong answer, not a crash
    "error",  # any other non-zero exit: an exception, a syntax error, exiting before the check
    "timeout",  # wall time or CPU time ran out
    "memory",  # MemoryError (the address-space limit)
    "output_limit",  # more than max_output_bytes on stdout or stderr
    "blocked",  # stopped by the audit hook (an uncaught sandbox violation)
    "killed",  # killed by a signal we did not send (e.g. SIGSEGV)
    "sandbox_error",  # the sandbox itself could not be set up
)

# Exit codes the launcher uses to say why the program ended. They are labels only: a
# program can exit with them itself, which changes its failure reason, never its score.
_EXIT_FAILED = 121
_EXIT_MEMORY = 122
_EXIT_BLOCKED = 123
_EXIT_SETUP = 124

_NOBODY = 65534
_MiB = 1024 * 1024


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here at all (no working isolation level was found)."""


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    ``status`` is one of :data:`STATUSES`. ``exit_code`` is the child's return code
    (negative: killed by that signal). ``stdout`` and
    ``stderr`` are decoded as UTF-8 (bad bytes replaced) and cut at ``max_output_bytes``
    (``truncated`` says so). ``checks_passed`` is None without a check, else whether the
    check ran to its end.
    """

    status: str
    exit_code: int
    stdout: str
    stderr: str
    wall_seconds: float
    cpu_seconds: float
    truncated: bool = False
    checks_passed: bool | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Isolation:
    """How children are isolated on this machine (found once by :func:`sandbox_isolation`).

    ``prefix`` is the ``unshare`` command put in front of the interpreter (empty: none);
    ``network_namespace`` / ``mount_namespace`` say what it gives; ``user`` is the
    ``(uid, gid)`` the child drops to (when rewardlab runs as root), else None.
    """

    prefix: tuple[str, ...]
    network_namespace: bool
    mount_namespace: bool
    user: tuple[int, int] | None

    def describe(self) -> str:
        parts = [
            "network namespace" if self.network_namespace else "NO network namespace",
            "private mounts" if self.mount_namespace else "NO private mounts",
            f"uid {self.user[0]}" if self.user else "your own uid",
        ]
        return ", ".join(parts)


# --------------------------------------------------------------------------- the launcher

# Runs in the child as `python -I -S -B -X utf8 -c _LAUNCHER <args>`: sets the limits, reads
# the sources, mounts, drops privileges, installs the audit hook, then runs the program.
# Everything the hook needs is bound as a positional default (a tuple, so it cannot be
# changed without setting __defaults__, which the hook refuses), and it only calls C
# functions and methods of built-in types on untrusted values, so monkeypatching builtins or
# modules does not change what it allows.
_LAUNCHER = r'''
import os, sys, resource


class SandboxViolation(PermissionError):
    """Raised by rewardlab's sandbox audit hook."""


def _launch():
    (mode, stage, uid, gid, cpu, mem, disk, nofile, ppid, mount, hook_on, nonce_fd,
     hide, hide_files) = sys.argv[1:15]
    uid, gid, cpu, mem, disk = int(uid), int(gid), int(cpu), int(mem), int(disk)
    nofile, ppid, nonce_fd = int(nofile), int(ppid), int(nonce_fd)
    mount, hook_on = mount == "1", hook_on == "1"
    hide = [h for h in hide.split("\n") if h]
    hide_files = [h for h in hide_files.split("\n") if h]
    R = resource

    def fail(msg):
        os.write(2, ("rewardlab sandbox setup failed: %s\n" % msg).encode())
        os._exit(124)

    try:
        R.setrlimit(R.RLIMIT_CORE, (0, 0))
        R.setrlimit(R.RLIMIT_CPU, (cpu, cpu + 1))
        R.setrlimit(R.RLIMIT_FSIZE, (disk, disk))
        R.setrlimit(R.RLIMIT_NOFILE, (nofile, nofile))
        R.setrlimit(R.RLIMIT_AS, (mem, mem))
    except (OSError, ValueError) as e:
        fail("rlimits: %r" % (e,))

    with open(os.path.join(stage, "solution.py"), "rb") as f:
        src = f.read()
    check = nonce = None
    if mode == "check":
        with open(os.path.join(stage, "check.py"), "rb") as f:
            check = f.read()
        os.unlink(os.path.join(stage, "check.py"))
        nonce = os.read(nonce_fd, 64)
        os.close(nonce_fd)

    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError) as e:
        if mount:
            fail("ctypes: %r" % (e,))
        ctypes = libc = None

    paths = [p for p in sys.path if os.path.isdir(p)]
    fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in paths]

    if mount:
        def mnt(target, fstype, flags, data):
            source = b"none" if fstype else None
            if libc.mount(source, target.encode(), fstype, flags, data) != 0:
                fail("mount %s: %s" % (target, os.strerror(ctypes.get_errno())))
        RDONLY, NOSUID, NODEV, NOEXEC, BIND, REC, PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
        mnt("/", None, REC | PRIVATE, None)
        for d in hide:
            mnt(d, b"tmpfs", RDONLY | NOSUID | NODEV | NOEXEC, b"size=4k,mode=0555")
        for f in hide_files:
            if libc.mount(b"/dev/null", f.encode(), None, BIND, None) != 0:
                fail("mount %s: %s" % (f, os.strerror(ctypes.get_errno())))
        owner = ",uid=%d,gid=%d" % (uid, gid) if uid >= 0 else ""
        mnt("/tmp", b"tmpfs", NOSUID | NODEV | NOEXEC,
            ("size=%d,mode=0700%s" % (disk, owner)).encode())
        work = "/tmp"
        with open("/tmp/solution.py", "wb") as f:
            f.write(src)
    else:
        work = stage
    os.chdir(work)

    if uid >= 0:
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        except OSError as e:
            fail("dropping to uid %d: %r" % (uid, e))
        if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
            fail("still privileged after setuid")
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            fail("could regain root")
    try:
        R.setrlimit(R.RLIMIT_NPROC, (0, 0))
    except (OSError, ValueError) as e:
        fail("RLIMIT_NPROC: %r" % (e,))
    if libc is not None and hasattr(libc, "prctl"):
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL
    if os.getppid() != ppid:
        os._exit(125)  # the parent is already gone
    del ctypes, libc
    for name in list(sys.modules):
        if name == "ctypes" or name.startswith("ctypes.") or name == "_ctypes":
            del sys.modules[name]

    new_path = []
    moved = []
    for p, fd in zip(paths, fds):
        if os.access(p, os.R_OK | os.X_OK):
            new_path.append(p)
            os.close(fd)
        else:
            new_path.append("/proc/self/fd/%d" % fd)
            moved.append((p, new_path[-1]))
    sys.path[:] = new_path
    # Packages imported at start-up (encodings) look for their submodules in __path__.
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if moved and isinstance(search, list):
            for i, entry in enumerate(search):
                for old, new in moved:
                    if entry == old or entry.startswith(old + "/"):
                        search[i] = new + entry[len(old):]
                        break
    sys.path_importer_cache.clear()
    sys.argv[:] = [os.path.join(work, "solution.py")]

    if hook_on:
        libs = tuple(dict.fromkeys(new_path + paths))
        _install_hook(SandboxViolation, work, libs)

    name = "solution" if check is not None else "__main__"
    module = type(sys)(name)
    module.__file__ = sys.argv[0]
    module.__builtins__ = __builtins__
    sys.modules[name] = module
    out, err = sys.stdout, sys.stderr
    exec_, compile_, excepthook = exec, compile, sys.__excepthook__
    isinstance_, type_, int_ = isinstance, type, int
    write = os.write
    phase = "program"
    status = 0
    try:
        code = compile_(src, "solution.py", "exec", dont_inherit=True)
        check_code = None
        if check is not None:
            check_code = compile_(check, "check.py", "exec", dont_inherit=True)
        exec_(code, module.__dict__)
        if check_code is not None:
            phase = "check"
            exec_(check_code, module.__dict__)
            phase = "done"
    except SystemExit as e:
        if check is not None:
            write(2, b"\nrewardlab sandbox: the program exited before the checks finished\n")
            status = 1
        elif e.code is None:
            status = 0
        elif isinstance_(e.code, int_):
            status = e.code & 0xFF
        else:
            try:
                write(2, ("%s\n" % (e.code,)).encode(errors="replace"))
            except BaseException:
                pass
            status = 1
    except MemoryError:
        write(2, b"MemoryError\n")
        status = 122
    except BaseException as e:
        try:
            tb = e.__traceback__
            tb = tb.tb_next or tb  # hide the launcher's own frame
            BaseException.with_traceback(e, tb)
            excepthook(type_(e), e, tb)
        except BaseException:
            pass
        if isinstance_(e, SandboxViolation):
            status = 123
        elif phase == "check" and isinstance_(e, AssertionError):
            status = 121
        else:
            status = 1
    for stream in (sys.stdout, sys.stderr, out, err):
        try:
            stream.flush()
        except BaseException:
            pass
    if status == 0 and check is not None and phase == "done":
        write(2, nonce)
    os._exit(status)


def _install_hook(V, work, libs):
    lib_roots = tuple((p, p + "/") for p in libs)
    read_roots = ((work, work + "/"),) + lib_roots
    write_roots = ((work, work + "/"),)
    read_files = frozenset(("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"))
    write_files = frozenset(("/dev/null",))

    def allowed(path, write, roots=None, getcwd=os.getcwd, fspath=os.fspath, str_=str,
                bytes_=bytes, int_=int, type_=type, isinstance_=isinstance,
                reads=read_roots, writes=write_roots, rfiles=read_files, wfiles=write_files):
        if path is None:
            path = "."
        if isinstance_(path, int_):
            return True  # an already open descriptor
        if not (isinstance_(path, str_) or isinstance_(path, bytes_)):
            path = fspath(path)
        if isinstance_(path, bytes_):
            path = bytes_.decode(path, "utf-8", "surrogateescape")
        else:
            path = str_.__str__(path)
        if not str_.startswith(path, "/"):
            path = getcwd() + "/" + path
        parts = []
        for part in str_.split(path, "/"):
            if part == "" or part == ".":
                continue
            if part == "..":
                return False
            parts.append(part)
        norm = "/" + "/".join(parts)
        if roots is None:
            roots = writes if write else reads
        for root, slash in roots:
            if norm == root or str_.startswith(norm, slash):
                return True
        return norm in (wfiles if write else rfiles)

    deny = frozenset((
        "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
        "subprocess.Popen", "pty.spawn", "os.startfile", "webbrowser.open",
        "os.kill", "os.killpg", "signal.pthread_kill", "resource.prlimit",
        "os.symlink", "os.link", "os.add_dll_directory",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "sys.settrace", "sys.setprofile", "code.__new__",
        "sqlite3.enable_load_extension", "sqlite3.load_extension",
    ))
    deny_prefix = ("socket.", "ctypes.", "_ctypes.")
    blocked_modules = frozenset((
        "ctypes", "_ctypes", "_testcapi", "_testinternalcapi", "_testbuffer",
        "_testmultiphase", "_testimportmultiple", "_xxsubinterpreters", "_xxinterpchannels",
        "_posixshmem",
    ))
    read_events = frozenset(("os.listdir", "os.scandir", "os.chdir", "os.getxattr",
                             "os.listxattr", "glob.glob"))
    write_events = frozenset(("os.mkdir", "os.rmdir", "os.remove", "os.chmod", "os.chown",
                              "os.truncate", "os.utime", "os.setxattr", "os.removexattr",
                              "os.chflags", "shutil.rmtree"))
    guarded = frozenset(("__code__", "__defaults__", "__kwdefaults__"))
    wmask = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def hook(event, args, V=V, allowed=allowed, deny=deny, deny_prefix=deny_prefix,
             blocked=blocked_modules, read_events=read_events, write_events=write_events,
             guarded=guarded, wmask=wmask, libs=lib_roots, str_=str, int_=int,
             type_=type, isinstance_=isinstance):
        if event == "open":
            flags = args[2]
            write = isinstance_(flags, int_) and (flags & wmask) != 0
            if not allowed(args[0], write):
                raise V("sandbox: opening %r for %s is not allowed"
                        % (args[0] if type_(args[0]) is str_ else "a path",
                           "writing" if write else "reading"))
            return
        if event in deny:
            raise V("sandbox: %s is not allowed" % event)
        for prefix in deny_prefix:
            if str_.startswith(event, prefix):
                raise V("sandbox: %s is not allowed" % event)
        if event == "import":
            name, filename = args[0], args[1]
            if isinstance_(name, str_):
                top = str_.split(name, ".")[0]
                if name in blocked or top in blocked:
                    raise V("sandbox: importing %s is not allowed" % name)
            if filename is not None and not allowed(filename, False, libs):
                raise V("sandbox: loading an extension module from outside the standard"
                        " library is not allowed")
            return
        if event in read_events:
            if not allowed(args[0], False):
                raise V("sandbox: %s outside the working folder is not allowed" % event)
            return
        if event in write_events:
            if not allowed(args[0], True):
                raise V("sandbox: %s outside the working folder is not allowed" % event)
            return
        if event == "os.rename" or event == "shutil.move" or event == "shutil.copyfile":
            if not (allowed(args[0], event != "shutil.copyfile") and allowed(args[1], True)):
                raise V("sandbox: %s outside the working folder is not allowed" % event)
            return
        if event == "sqlite3.connect":
            db = args[0]
            if not (db == ":memory:" or db == "" or allowed(db, True)):
                raise V("sandbox: sqlite3 files outside the working folder are not allowed")
            return
        if event == "object.__setattr__" or event == "object.__delattr__":
            # The path check is reachable from a frame while it calls a PathLike's
            # __fspath__; the hook itself only through gc, which is refused above.
            if args[0] is allowed and args[1] in guarded:
                raise V("sandbox: changing the sandbox's %s is not allowed" % args[1])

    sys.addaudithook(hook)


_launch()
'''


# --------------------------------------------------------------------------- isolation

_isolation: Isolation | None = None
_isolation_lock = threading.Lock()

# Top-level entries of / left visible in the child's private mount namespace: the system's
# programs and libraries (extension modules need them), /proc (the standard library is reached
# through /proc/self/fd), /dev, /sys, and /tmp (replaced by the working folder). Every other
# top-level folder is covered by an empty read-only tmpfs and every top-level file by
# /dev/null; /dev/shm is covered too.
_KEEP = frozenset(
    ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "proc", "dev", "sys", "tmp",
     "nix", "gnu")
)  # fmt: skip


def _hidden() -> tuple[list[str], list[str]]:
    """The folders and the files of / (and /dev/shm) to cover in the child."""
    folders: list[str] = []
    files: list[str] = []
    with os.scandir("/") as entries:
        for entry in entries:
            if entry.name in _KEEP or "\n" in entry.name or entry.is_symlink():
                continue
            if entry.is_dir():
                folders.append(entry.path)
            elif entry.is_file():
                files.append(entry.path)
    if os.path.isdir("/dev/shm") and not os.path.islink("/dev/shm"):
        folders.append("/dev/shm")
    return sorted(folders), sorted(files)


def _candidates() -> list[Isolation]:
    root = os.geteuid() == 0
    user = _nobody() if root else None
    unshare = shutil.which("unshare")
    levels: list[Isolation] = []
    if unshare:
        if root:
            levels.append(Isolation((unshare, "--net", "--mount"), True, True, user))
            levels.append(Isolation((unshare, "--net"), True, False, user))
        else:
            ns = (unshare, "--user", "--map-root-user", "--net", "--mount")
            levels.append(Isolation(ns, True, True, None))
            levels.append(Isolation((unshare, "--user", "--net"), True, False, None))
    levels.append(Isolation((), False, False, user))
    return levels


def _nobody() -> tuple[int, int]:
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return _NOBODY, _NOBODY


def sandbox_isolation() -> Isolation:
    """The strongest isolation that works here, found once by running a tiny program.

    Tries, in order: ``unshare`` with a network and a mount namespace (as root; a user
    namespace otherwise), ``unshare`` with a network namespace only, then no namespaces
    (rlimits, the uid drop and the audit hook still apply). Raises SandboxUnavailable when
    even the last cannot run a program.
    """
    global _isolation
    with _isolation_lock:
        if _isolation is None:
            errors: list[str] = []
            for level in _candidates():
                result = _run(
                    "import json, math\nprint(json.dumps([math.pi > 3]))\n",
                    level,
                    stdin="",
                    check=None,
                    cpu_seconds=5,
                    wall_seconds=10,
                    memory_mb=256,
                    max_output_bytes=4096,
                    disk_mb=1,
                    max_open_files=32,
                    audit_hook=True,
                )
                if result.ok and result.stdout.strip() == "[true]":
                    _isolation = level
                    break
                errors.append(f"{level.describe()}: {result.status}: {result.stderr[-300:]}")
            else:
                raise SandboxUnavailable(
                    "rewardlab's sandbox cannot run Python here; tried " + " | ".join(errors)
                )
        return _isolation


# --------------------------------------------------------------------------- running


def run_sandboxed(
    code: str,
    *,
    stdin: str = "",
    check: str | None = None,
    cpu_seconds: float = 5.0,
    wall_seconds: float = 10.0,
    memory_mb: int = 512,
    max_output_bytes: int = 1_000_000,
    disk_mb: int = 64,
    max_open_files: int = 64,
    audit_hook: bool = True,
) -> SandboxResult:
    """Run the Python program ``code`` in a sandboxed child process and report what it did.

    The program runs as ``__main__`` with ``stdin`` as its standard input. With ``check``
    (Python, e.g. asserts) the program instead runs as module ``solution`` (so an
    ``if __name__ == "__main__":`` block does not run, and ``from solution import f`` works)
    and ``check`` runs after it in the same namespace; the status is ``ok`` only if the
    check ran to its end, ``failed`` if it raised AssertionError.

    Limits: ``cpu_seconds`` (rounded up to whole seconds, at least 1), ``wall_seconds``
    (including interpreter start-up), ``memory_mb`` of address space, ``max_output_bytes``
    per stream, ``disk_mb`` per written file (and the whole working folder, with a mount
    namespace), ``max_open_files``. No child processes or threads. ``audit_hook=False``
    leaves only the kernel's limits (for testing those alone). See the module docstring for
    what is enforced how. Never raises for anything the program does; raises
    SandboxUnavailable if the sandbox cannot run on this machine at all.
    """
    return _run(
        code,
        sandbox_isolation(),
        stdin=stdin,
        check=check,
        cpu_seconds=cpu_seconds,
        wall_seconds=wall_seconds,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
        disk_mb=disk_mb,
        max_open_files=max_open_files,
        audit_hook=audit_hook,
    )


def _run(
    code: str,
    level: Isolation,
    *,
    stdin: str,
    check: str | None,
    cpu_seconds: float,
    wall_seconds: float,
    memory_mb: int,
    max_output_bytes: int,
    disk_mb: int,
    max_open_files: int,
    audit_hook: bool,
) -> SandboxResult:
    cpu_limit = max(1, math.ceil(cpu_seconds))
    stage = tempfile.mkdtemp(prefix="rewardlab-sandbox-")
    nonce = secrets.token_hex(16).encode() if check is not None else b""
    nonce_r = -1
    stdin_file = None
    try:
        Path(stage, "solution.py").write_text(code, encoding="utf-8", errors="surrogatepass")
        if check is not None:
            Path(stage, "check.py").write_text(check, encoding="utf-8", errors="surrogatepass")
            nonce_r, nonce_w = os.pipe()
            os.write(nonce_w, nonce)
            os.close(nonce_w)
        if level.user is not None and not level.mount_namespace:
            os.chown(stage, *level.user)  # the child works here after dropping to nobody
            os.chmod(stage, 0o700)
        if stdin:
            stdin_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
            stdin_file.write(stdin.encode("utf-8", errors="surrogatepass"))
            stdin_file.seek(0)
        uid, gid = level.user if level.user is not None else (-1, -1)
        argv = [
            *level.prefix,
            sys.executable,
            "-I",
            "-S",
            "-B",
            "-X",
            "utf8",
            "-c",
            _LAUNCHER,
            "check" if check is not None else "main",
            stage,
            str(uid),
            str(gid),
            str(cpu_limit),
            str(int(memory_mb) * _MiB),
            str(int(disk_mb) * _MiB),
            str(int(max_open_files)),
            str(os.getpid()),
            "1" if level.mount_namespace else "0",
            "1" if audit_hook else "0",
            str(nonce_r),
            *("\n".join(part) for part in (_hidden() if level.mount_namespace else ([], []))),
        ]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        workdir = "/tmp" if level.mount_namespace else stage
        env |= {"HOME": workdir, "TMPDIR": workdir}
        return _spawn_and_wait(
            argv,
            env,
            stdin_file,
            nonce_r,
            nonce,
            check is not None,
            cpu_limit,
            wall_seconds,
            max_output_bytes,
        )
    finally:
        if nonce_r >= 0:
            os.close(nonce_r)
        if stdin_file is not None:
            stdin_file.close()
        _remove_tree(stage)


def _spawn_and_wait(
    argv: list[str],
    env: dict[str, str],
    stdin_file: Any,
    nonce_fd: int,
    nonce: bytes,
    checking: bool,
    cpu_limit: int,
    wall_seconds: float,
    cap: int,
) -> SandboxResult:
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd="/",
        start_new_session=True,
        pass_fds=(nonce_fd,) if nonce_fd >= 0 else (),
    )
    assert proc.stdout is not None and proc.stderr is not None
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    reason: str | None = None  # why we killed it: "timeout" or "output_limit"
    selector = selectors.DefaultSelector()
    pidfd = -1
    try:
        for fd in buffers:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        try:
            pidfd = os.pidfd_open(proc.pid)
            selector.register(pidfd, selectors.EVENT_READ)
        except (AttributeError, OSError):
            pidfd = -1
        exited = False
        open_pipes = len(buffers)
        deadline = started + wall_seconds
        while open_pipes or not exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "timeout"
                break
            wait = remaining if pidfd >= 0 else min(remaining, 0.02)
            for key, _ in selector.select(wait):
                if key.fd == pidfd:
                    exited = True
                    selector.unregister(pidfd)
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    open_pipes -= 1
                    continue
                buffer = buffers[key.fd]
                buffer += chunk[: cap + 1 - len(buffer)]
                if len(buffer) > cap:
                    reason = "output_limit"
            if reason:
                break
            if pidfd < 0 and not exited:
                exited = _has_exited(proc.pid)
    finally:
        selector.close()
        if pidfd >= 0:
            os.close(pidfd)
        # Kill the whole group (the child is not reaped yet, so its pid and group are ours).
        for kill in (os.killpg, os.kill):
            try:
                kill(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        proc.stderr.close()
    wall = time.monotonic() - started
    cpu = usage.ru_utime + usage.ru_stime
    out, err = (bytes(b) for b in buffers.values())
    truncated = len(out) > cap or len(err) > cap
    out, err = out[:cap], err[:cap]
    passed: bool | None = None
    if checking:
        passed = reason is None and proc.returncode == 0 and err.endswith(nonce)
        err = err.removesuffix(nonce)
        if reason is None and proc.returncode == 0 and not passed:
            err += b"\nrewardlab sandbox: the program exited before the checks finished\n"
    status_ = _status(proc.returncode, reason, checking, passed, cpu, cpu_limit)
    return SandboxResult(
        status=status_,
        exit_code=proc.returncode,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        wall_seconds=wall,
        cpu_seconds=cpu,
        truncated=truncated,
        checks_passed=passed,
    )


def _has_exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (so its pid stays ours)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _status(
    code: int, reason: str | None, checking: bool, passed: bool | None, cpu: float, cpu_limit: int
) -> str:
    if reason is not None:
        return reason
    if code == 0:
        return "error" if checking and not passed else "ok"
    if code < 0:
        if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= cpu_limit - 0.05):
            return "timeout"
        return "killed"
    labels = {_EXIT_MEMORY: "memory", _EXIT_BLOCKED: "blocked", _EXIT_SETUP: "sandbox_error"}
    if checking:
        labels[_EXIT_FAILED] = "failed"
    return labels.get(code, "error")


def _remove_tree(path: str) -> None:
    def retry(func: Any, failed: str, exc: Any) -> None:
        # A program may leave folders without write or search permission: restore, retry.
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
            func(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


# --------------------------------------------------------------------------- code_exec


@dataclass(frozen=True)
class _Test:
    """One test: either an assert snippet (``check``) or a stdin/stdout case."""

    check: str | None = None
    stdin: str = ""
    expected: str | None = None


_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_PYTHON_TAGS = frozenset(("python", "python3", "py", "py3"))


def extract_code(completion: str) -> str:
    """The last ```python fenced block of ``completion`` (an unclosed one runs to the end);
    failing that the last untagged ``` block; failing that the whole completion."""
    tagged: str | None = None
    untagged: str | None = None
    for match in _FENCE.finditer(completion):
        tag = match.group(1).lower()
        if tag in _PYTHON_TAGS:
            tagged = match.group(2)
        elif not tag:
            untagged = match.group(2)
    if tagged is not None:
        return tagged
    return untagged if untagged is not None else completion


def _normalize_output(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _parse_tests(column: str, row: int, value: Any) -> list[_Test] | None:
    """The row's tests, or None when it has none; a DataError for a malformed value."""
    where = f"reward 'code_exec': column '{column}', row {row}"
    if value is None:
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            try:
                value = json.loads(stripped)  # a JSON-encoded list of cases
            except ValueError:
                pass
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, dict):
        if "inputs" in value or "outputs" in value:
            inputs, outputs = value.get("inputs"), value.get("outputs")
            if not (isinstance(inputs, list) and isinstance(outputs, list)) or len(
                inputs
            ) != len(outputs):
                raise DataError(
                    f"{where}: 'inputs' and 'outputs' must be lists of the same length"
                )
            items = [{"input": i, "output": o} for i, o in zip(inputs, outputs, strict=True)]
        else:
            items = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise DataError(
            f"{where}: expected a test snippet (str), a list of them, or a list of "
            f"{{'input', 'output'}} cases; got {type(value).__name__}"
        )
    tests: list[_Test] = []
    for k, item in enumerate(items):
        if isinstance(item, str):
            try:
                compile(item, f"<{column} row {row} test {k}>", "exec", dont_inherit=True)
            except (SyntaxError, ValueError) as err:
                raise DataError(f"{where}, test {k}: not valid Python: {err}") from None
            tests.append(_Test(check=item))
        elif isinstance(item, dict) and "output" in item:
            stdin, expected = item.get("input", ""), item["output"]
            if stdin is None:
                stdin = ""
            if not isinstance(stdin, str) or not isinstance(expected, str):
                raise DataError(
                    f"{where}, test {k}: 'input' and 'output' must be strings, got "
                    f"{type(stdin).__name__} and {type(expected).__name__}"
                )
            tests.append(_Test(stdin=stdin, expected=expected))
        else:
            raise DataError(
                f"{where}, test {k}: expected a test snippet (str) or an "
                f"{{'input', 'output'}} case, got {_show(item)}"
            )
    return tests or None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class CodeExecReward:
    """The reward function made by :func:`code_exec` (a class so it can carry counters).

    ``failures`` counts test runs that ended without a real verdict, by status:
    ``error`` (the program raised or exited non-zero), ``timeout``, ``memory``,
    ``output_limit``, ``blocked`` (a sandbox violation), ``killed`` and ``sandbox_error``
    (the sandbox itself failed: ``last_sandbox_error`` says how). A wrong answer (a failed
    assert, a wrong output) is not a failure. The trainer logs and resets it between steps as
    ``failures/<reward>/<status>``.
    """

    def __init__(
        self,
        column: str,
        timeout_seconds: float,
        memory_mb: int,
        max_output_bytes: int,
        workers: int,
        extract: bool,
    ) -> None:
        self.column = column
        self.timeout_seconds = timeout_seconds
        self.memory_mb = memory_mb
        self.max_output_bytes = max_output_bytes
        self.workers = workers
        self.extract = extract
        self.failures: Counter[str] = Counter()
        self.last_sandbox_error: str | None = None
        self._lock = threading.Lock()  # runs finish on several threads at once
        self.__name__ = "code_exec"

    def _count(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] += 1

    def _run_one(self, program: str, test: _Test) -> bool:
        try:
            result = run_sandboxed(
                program,
                stdin=test.stdin,
                check=test.check,
                cpu_seconds=self.timeout_seconds,
                wall_seconds=self.timeout_seconds,
                memory_mb=self.memory_mb,
                max_output_bytes=self.max_output_bytes,
            )
        except Exception as err:  # noqa: BLE001 - a broken sandbox must not stop training
            with self._lock:
                self.failures["sandbox_error"] += 1
                self.last_sandbox_error = f"{type(err).__name__}: {err}"
            return False
        if result.status not in ("ok", "failed"):
            self._count(result.status)
            if result.status == "sandbox_error":
                with self._lock:
                    self.last_sandbox_error = result.stderr[-1000:]
            return False
        if test.check is not None:
            return bool(result.checks_passed)
        assert test.expected is not None
        return result.ok and _normalize_output(result.stdout) == _normalize_output(
            test.expected
        )

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: Any
    ) -> list[float | None]:
        from rewardlab.rewards.builtin import _column

        values = _column("code_exec", columns, self.column)
        per_row = [_parse_tests(self.column, i, v) for i, v in enumerate(values)]
        if len(per_row) != len(completions):
            raise ValueError(f"{len(per_row)} test rows for {len(completions)} completions")
        programs = [extract_code(c) if self.extract else c for c in completions]
        jobs = [
            (row, programs[row], test)
            for row, tests in enumerate(per_row)
            if tests is not None
            for test in tests
        ]
        passed = [0] * len(completions)
        if jobs:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                outcomes = pool.map(lambda job: self._run_one(job[1], job[2]), jobs)
                for (row, _, _), ok in zip(jobs, outcomes, strict=True):
                    passed[row] += ok
        return [
            None if tests is None else passed[row] / len(tests)
            for row, tests in enumerate(per_row)
        ]


def _check_whole(arg: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"reward 'code_exec': arg '{arg}' must be a whole number >= {minimum}, "
            f"got {value!r}"
        )
    return value


def code_exec(
    column: str = "tests",
    timeout_seconds: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 1_000_000,
    workers: int = 4,
    extract: bool = True,
) -> RewardFn:
    """Fraction of the row's ``column`` tests that the completion's Python code passes.

    Each row's ``column`` holds an assert snippet (str), a list of them, or a list of
    ``{"input": ..., "output": ...}`` cases (also a JSON string of such a list, or APPS-style
    ``{"inputs": [...], "outputs": [...]}``). Every test is a separate run of the program in
    a sandbox (its own process, limits, temporary folder; no network, no files outside,
    no subprocesses): an assert snippet runs after the program in its namespace and passes
    if it finishes; an io case feeds ``input`` on stdin and passes if the program exits 0
    and its stdout equals ``output`` (trailing spaces and blank lines ignored). With
    ``extract`` (default) the code is the completion's last ```python block, if any.

    ``timeout_seconds`` (wall and CPU), ``memory_mb`` and ``max_output_bytes`` limit each
    run; ``workers`` runs that many at once. A run that crashes, times out or is killed
    scores 0 for its test and is counted in the function's ``failures``. Rows with no tests
    score ``None``. See ``rewardlab.rewards.sandbox`` for what the sandbox enforces and how.
    """
    from rewardlab.rewards.builtin import _check_bool, _check_number, _check_str

    column = _check_str("code_exec", "column", column)
    timeout_seconds = _check_number("code_exec", "timeout_seconds", timeout_seconds, positive=True)
    memory_mb = _check_whole("memory_mb", memory_mb, 32)
    max_output_bytes = _check_whole("max_output_bytes", max_output_bytes, 1)
    workers = _check_whole("workers", workers, 1)
    extract = _check_bool("code_exec", "extract", extract)
    return CodeExecReward(column, timeout_seconds, memory_mb, max_output_bytes, workers, extract)
