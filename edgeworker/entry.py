"""The `edgeworker` program's entry point. What a box runs most goes around click and the command
tree (they cost most of a CLI call's start-up, on a small box ~10x a bare interpreter, and 1.2 MiB
of a worker's memory): `--version`, a help page of a built program (`edgeworker.helppages`), and
`run`, the worker, when its arguments are plain. Anything else, a usage error included, is
click's (`edgeworker.cli`)."""

import os
import sys

DEFAULT_CONFIG = "edgeworker.toml"
DEFAULT_DB = "edgeworker.db"


def main() -> None:
    argv = sys.argv[1:]
    if getattr(sys, "frozen", False) and (argv[:1] == ["--multiprocessing-fork"] or "-c" in argv):
        multiprocessing_child()
    if argv in (["--version"], ["-V"]):
        from edgeworker import __version__

        print(f"edgeworker, version {__version__}")
        return
    from edgeworker import helppages

    page = helppages.find(argv, os.environ)
    if page is not None:
        show(page)
        return
    # peewee imports hashlib, and hashlib loads OpenSSL (3.5 MB resident, 7 ms) that edgeworker
    # does not use: its hashes come from the standard library's own modules instead.
    sys.modules.setdefault("_hashlib", None)
    params = run_params(argv, os.environ)
    if params is not None:
        sys.exit(run(params))
    from edgeworker.cli import main as cli_main

    cli_main()


def multiprocessing_child() -> None:
    """A built program started by a job's `multiprocessing` with the spawn or forkserver method (a
    pool's process, the resource tracker, the fork server; `sys.executable` is the program) runs
    what it was started for and exits, in PyInstaller's `freeze_support`, which importing
    multiprocessing.spawn installs (packaging/prepare-build). Any other arguments return."""
    import multiprocessing.spawn

    multiprocessing.spawn.freeze_support()


RUN_PARAMS = {"config_path": None, "db_path": None, "debug": False, "apply_migrations": False,
              "workers": None, "log_format": None, "name": None}
ENVIRONMENT = {"config_path": "EDGEWORKER_CONFIG", "db_path": "EDGEWORKER_DB",
               "name": "EDGEWORKER_NAME"}


def run_params(argv: list[str], environ) -> dict | None:
    """`[--config F] [--db D] [--debug] run [--migrate] [--workers N] [--log-format F] [--name N]`
    read as click reads it (the same names and values as its parameters); None for anything
    else."""
    params = dict(RUN_PARAMS)
    words = iter(argv)
    command = None
    for word in words:
        if command is None and word == "run":
            command = word
            continue
        if word == ("--migrate" if command else "--debug"):
            params["apply_migrations" if command else "debug"] = True
            continue
        option, equals, value = word.partition("=")
        valued = ({"--workers": "workers", "--log-format": "log_format", "--name": "name"}
                  if command else
                  {"--config": "config_path", "--db": "db_path"})
        name = valued.get(option)
        if name is None:
            return None
        if not equals:
            value = next(words, "")
        params[name] = _convert(name, value)
        if params[name] is None:
            return None
    if command is None:
        return None
    for name, variable in ENVIRONMENT.items():
        if params[name] is None and environ.get(variable):
            params[name] = _convert(name, environ[variable])
            if params[name] is None:
                return None
    return params


def _convert(name: str, value: str):
    """A value as click's parameter types convert it, or None where they might not."""
    if not value or value.startswith("-"):
        return None
    if name == "workers":
        return int(value) if value.isascii() and value.isdigit() and 1 <= int(value) <= 64 \
            else None
    if name == "log_format":
        return value if value in ("text", "json") else None
    if name == "name":
        from edgeworker.config import check_worker_name

        try:
            return check_worker_name(value)
        except ValueError:
            return None  # click says why
    if name == "db_path" and value.startswith(("postgresql://", "postgres://")):
        return value
    from edgeworker.config import normal_path

    if os.path.isdir(value) or (os.path.exists(value) and not os.access(value, os.R_OK)):
        return None
    return normal_path(value)


def config_file(option):
    """The config file a command reads: the one given, else ./edgeworker.toml if there is one."""
    if option is None and os.path.isfile(DEFAULT_CONFIG):
        return DEFAULT_CONFIG
    return option


def run(params: dict) -> int:
    """`edgeworker run`, behind the CLI's error boundary (`errors.explain`)."""
    from edgeworker.errors import explain

    where = [params["db_path"] or DEFAULT_DB]
    try:
        from edgeworker import logs
        from edgeworker.config import load_config

        # Read before the daemon's imports: they take the room the parser leaves.
        config = load_config(config_file(params["config_path"]), forget_parser=True)
        from edgeworker.daemon import Daemon

        where[0] = params["db_path"] or config.worker.database or DEFAULT_DB
        logs.setup(params["log_format"] or config.worker.log_format,
                   "debug" if params["debug"] else config.worker.log_level)
        return Daemon(config, where[0], apply_migrations=params["apply_migrations"],
                      workers=params["workers"], name=params["name"]).run()
    except (EOFError, KeyboardInterrupt):
        print("\nAborted!", file=sys.stderr)  # as click says it
        return 1
    except Exception as exc:
        if params["debug"]:
            raise
        message, code = explain(exc, lambda: where[0])
        print(f"Error: {message}", file=sys.stderr)
        return code


def show(page: str) -> None:
    try:
        sys.stdout.write(page)
        sys.stdout.flush()
    except BrokenPipeError:  # `edgeworker --help | head -1`
        if not reader_gone():
            raise
        output_closed()


def reader_gone() -> bool:
    """Has the reader of our stdout closed its end? (A pipe polls as an error then.)"""
    import io
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False


def output_closed():
    """Whoever read our output is gone (`edgeworker status | head -1`): end quietly, killed by
    SIGPIPE as `git log` or `cat` are (status 141 in a shell), rather than with an error."""
    import signal

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush at exit
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(128 + signal.SIGPIPE)  # not reached


def openssl_for_jobs() -> None:
    """Undo the blocks of `_hashlib` (main) and psycopg2 and psycopg (edgeworker/__init__)
    before a job's code imports: it gets the full hashlib, and the drivers that are
    installed."""
    for name in ("psycopg2", "psycopg"):
        if sys.modules.get(name, False) is None:
            del sys.modules[name]
    if "_hashlib" in sys.modules and sys.modules["_hashlib"] is None:
        del sys.modules["_hashlib"]
        for name in ("hashlib", "hmac"):
            sys.modules.pop(name, None)
