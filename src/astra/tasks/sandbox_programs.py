"""The three programs the code sandbox runs, kept as source text: the guard prepended to every model-written
program, the runner that executes it and proves it reached its last line, and the supervisor that isolates and
watches it. Only :mod:`astra.tasks.code_execution` launches them; what each level of isolation contains is in its
docstring and in docs/code-execution.md."""


# Prepended to every program. It is NOT a sandbox (``import _socket``, ctypes or ``os.open`` walk around it);
# like the guards of human-eval / EvalPlus it only turns the common destructive calls of *accidentally* bad code
# into errors. The protection is the OS: separate process, rlimits, throwaway cwd, network namespace.
GUARD_SOURCE = """\
def _astra_guard():
    import os, shutil, socket, subprocess
    root = os.path.realpath(os.getcwd())
    def inside(path):
        try:
            real = os.path.realpath(os.fspath(path))
        except Exception:
            return False
        return real == root or real.startswith(root + os.sep)
    def refused(name):
        def call(*args, **kwargs):
            raise PermissionError(name + " is disabled while running generated code")
        return call
    def confined(name, function):
        def call(path, *args, **kwargs):
            if not inside(path):
                raise PermissionError(name + " outside the working directory is disabled")
            return function(path, *args, **kwargs)
        return call
    for name in ("remove", "unlink", "rmdir", "removedirs", "rename", "replace", "truncate", "chmod", "chown"):
        setattr(os, name, confined("os." + name, getattr(os, name)))
    shutil.rmtree = confined("shutil.rmtree", shutil.rmtree)
    shutil.move = confined("shutil.move", shutil.move)
    for name in ("system", "popen", "kill", "killpg", "fork", "forkpty", "execv", "execve", "execvp", "spawnv",
                 "spawnve", "spawnvp", "posix_spawn", "posix_spawnp", "setuid", "putenv"):
        if hasattr(os, name):
            setattr(os, name, refused("os." + name))
    subprocess.Popen = refused("subprocess.Popen")  # run/call/check_output all go through Popen
    socket.socket = refused("socket.socket")  # create_connection etc. build a socket.socket
_astra_guard()
del _astra_guard
"""


# The verdict. The harness believes only a JSON report written by the supervisor on a pipe whose write end exists
# only in the supervisor (and in the launcher, outside the namespace): the program's process closes it before the
# interpreter starts, and reopening it through /proc/<supervisor>/fd needs ptrace rights over the supervisor,
# which the program lacks (another uid, or the same uid without capabilities while the supervisor is
# non-dumpable). Output, files and exit codes of the program are therefore never the verdict. The supervisor
# reports "done" only if, after the program's process ended with status 0, its "done" pipe holds a 16-byte token
# that the supervisor drew after the program's source was written and put in a second pipe before forking: the
# runner below copies it from that pipe to the "done" pipe after ``exec`` of the program returned normally. The
# token is in no file, argument, environment variable or object of the interpreter while the program runs, so a
# program that prints anything, reads every file it can, or exits early (``sys.exit(0)``, ``os._exit(0)``, a
# signal, killing its parent) cannot produce a pass. The limit, stated plainly: the runner and the program share
# one process (the tests must call the program's functions), so a program written against this harness that
# itself reads the token pipe and writes the "done" pipe (fd numbers from ``sys.argv`` or /proc/self/fd) forges
# a pass. No in-process scheme can prevent that; it would take running the tests in another process than the
# candidate code.
RUNNER_SOURCE = r"""
import os, sys, types
def _run(path, token_fd, done_fd):
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__builtins__ = __builtins__
    sys.modules["__main__"] = module
    sys.argv = [path]
    with open(path, encoding="utf-8") as handle:
        code = compile(handle.read(), path, "exec")
    exec(code, module.__dict__)
    os.write(done_fd, os.read(token_fd, 64))  # reached only when the program's last line ran
_run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
"""

# PID 1 of the namespace (or a plain parent without isolation): trusted code that never runs the program itself.
# It builds the filesystem view (namespace mode), forks the program's process, drops its privileges, waits for it
# and writes the report; when it exits, the kernel kills whatever the program left in the namespace.
SUPERVISOR_SOURCE = r"""
import ctypes, json, os, resource, secrets, signal, stat, sys

config = json.loads(sys.argv[1])
report_fd = config["report_fd"]
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 4096, 16384, 1 << 18


def report(**message):
    os.write(report_fd, json.dumps(message).encode())


def check(result, what):
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, what + ": " + os.strerror(error))


def mount(source, target, fstype, flags, data=None):
    encode = lambda text: None if text is None else text.encode()
    check(libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)),
          "mount " + target)


class MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


def read_only(path):
    # mount_setattr(AT_FDCWD, path, AT_RECURSIVE, {MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID}): syscall 442 on every
    # architecture, Linux >= 5.12. Recursive, so no submount (/work, /dev, ...) stays writable.
    attr = MountAttr(1 | 2, 0, 0, 0)
    check(libc.syscall(442, -100, path.encode(), 0x8000, ctypes.byref(attr), ctypes.sizeof(attr)),
          "mount_setattr " + path)


def sandbox_filesystem(program):
    with open(program, "rb") as handle:
        source = handle.read()
    os.umask(0o022)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    prefix = os.path.realpath(config["prefix"])
    parts = prefix.split(os.sep)
    # The first ancestor of the interpreter that other uids cannot traverse (e.g. /root) becomes an empty tmpfs
    # holding only the interpreter: the program can run Python but sees nothing else of that home directory.
    hidden = next((os.sep.join(parts[:i]) for i in range(2, len(parts) + 1)
                   if not os.stat(os.sep.join(parts[:i])).st_mode & stat.S_IXOTH), None)
    keep = os.open(prefix, os.O_PATH) if hidden else None
    read_only("/")
    if hidden:
        mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        os.makedirs(prefix, 0o755)
        mount("/proc/self/fd/%d" % keep, prefix, None, MS_BIND | MS_REC)
        os.close(keep)
        read_only(hidden)
    for target, options, writable in (("/tmp", "size=%dm,mode=1777" % config["tmp_mb"], True),
                                      ("/dev/shm", "size=16m,mode=1777", True),
                                      ("/var/tmp", "size=1m,mode=755", False), ("/run", "size=1m,mode=755", False)):
        if os.path.isdir(target) and not os.path.islink(target):
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
            if not writable:
                read_only(target)
    workdir = "/tmp/" + os.path.basename(os.path.dirname(program))
    os.mkdir(workdir, 0o700)
    with open(os.path.join(workdir, "program.py"), "wb") as handle:
        handle.write(source)
    return workdir


def start_program(workdir, token_r, done_w):
    os.chdir(workdir)
    for limit, value in config["limits"].items():
        resource.setrlimit(getattr(resource, limit), (value, value))
    uid = config["uid"]
    if uid is not None:  # root: a fresh uid of its own, so RLIMIT_NPROC counts only this program's processes
        os.chown(workdir, uid, uid)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # all uids non-zero: every capability is dropped
    check(libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")  # no setuid binary gives privileges back
    low = 3
    for fd in sorted((token_r, done_w)):
        os.closerange(low, fd)
        os.set_inheritable(fd, True)
        low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    env = dict(config["env"], HOME=workdir, TMPDIR=workdir)
    argv = [*config["child_prefix"], config["python"], "-I", "-S", "-B", "-c", config["runner"], "program.py",
            str(token_r), str(done_w)]
    os.execve(argv[0], argv, env)


def main():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    check(libc.prctl(4, 0, 0, 0, 0), "PR_SET_DUMPABLE")  # /proc/1/fd and ptrace need CAP_SYS_PTRACE now
    program = config["program"]
    workdir = sandbox_filesystem(program) if config["mounts"] else os.path.dirname(program)
    token = secrets.token_bytes(16)
    token_r, token_w = os.pipe()
    os.write(token_w, token)
    os.close(token_w)
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(done_r)
            os.close(report_fd)
            start_program(workdir, token_r, done_w)
        except BaseException as error:
            os.write(2, ("astra sandbox: could not start the program: %r\n" % error).encode())
        os._exit(126)
    os.close(token_r)
    os.close(done_w)
    status = os.waitpid(pid, 0)[1]
    os.set_blocking(done_r, False)
    try:
        received = os.read(done_r, 64)
    except BlockingIOError:
        received = b""
    report(code=os.waitstatus_to_exitcode(status), done=secrets.compare_digest(received, token))


try:
    main()
except Exception as error:
    report(error="sandbox setup failed: %r" % error)
"""
