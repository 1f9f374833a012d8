"""Entry-point helper of the scripts: known user errors become one line and exit status 2.

A mistake in the input (an unknown config key, a value of the wrong type, an unknown env
id, a malformed dataset, a missing or corrupt checkpoint, an unwritable output directory,
a non-finite loss) is reported as a single line on stderr naming the file or key at
fault and the fix, never as a traceback; anything else is a bug and keeps its full
traceback. ::

    @hydra.main(version_base="1.3", config_path="../conf", config_name="train")
    @guard
    def main(cfg): ...

    if __name__ == "__main__":
        sys.exit(run_cli(main))

Hydra prints its own multi-line report for errors raised while it composes the config;
:func:`run_cli` sets ``HYDRA_FULL_ERROR=1`` for the duration of the call (unless it is
already set) so those exceptions reach it and are formatted here too.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from dialogue_rl.checkpoint import CheckpointError
from dialogue_rl.config import ConfigError
from dialogue_rl.data.schema import DatasetError
from dialogue_rl.train import NonFiniteLossError, OutputDirError

#: Exceptions whose message is the whole report (they are written as one line, naming the fix).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DatasetError, CheckpointError, NonFiniteLossError, OutputDirError,
)
EXIT_USER_ERROR = 2
SCHEMA_FILE = "dialogue_rl/config.py"


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _override_of(full_key: str | None, argv: Sequence[str]) -> str | None:
    if not full_key:
        return None
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key == full_key:
            return arg
    return None


def _known_keys(object_type: Any) -> list[str]:
    if isinstance(object_type, type) and dataclasses.is_dataclass(object_type):
        return [f.name for f in dataclasses.fields(object_type)]
    return []


def _omegaconf_line(e: OmegaConfBaseException, argv: Sequence[str]) -> str:
    key = e.full_key or e.key or "?"
    where = _override_of(e.full_key, argv)
    source = f"command-line override {where!r}" if where else "conf/ yaml files"
    schema = getattr(e.object_type, "__name__", None)
    msg = _first_line(e.msg or str(e))
    if "not in" in msg or isinstance(e, (KeyError, AttributeError)):
        known = _known_keys(e.object_type)
        fix = f"use one of {', '.join(known)}" if known else "check the spelling"
        return f"config key '{key}': unknown key of {schema or 'the config'} ({source}; schema {SCHEMA_FILE}); fix: {fix}"
    return f"config key '{key}': {msg} ({source}; schema {SCHEMA_FILE}); fix: pass a value of the type the schema declares"


def format_error(e: BaseException, argv: Sequence[str] = ()) -> str | None:
    """The one-line report of a known user error, or ``None`` for anything else (a bug)."""
    if isinstance(e, USER_ERRORS):
        return _first_line(str(e))
    if isinstance(e, MissingConfigException):
        options = [o for o in (e.options or []) if not o.endswith("_schema")]
        missing = e.missing_cfg_file or "?"
        fix = f"choose one of {', '.join(options)}" if options else "check the group and option names"
        return f"conf/{missing}.yaml: no such config option ({_first_line(str(e))}); fix: {fix}"
    cause = e.__cause__ if isinstance(e, HydraException) else None
    if isinstance(e, OmegaConfBaseException):
        return _omegaconf_line(e, argv)
    if isinstance(cause, OmegaConfBaseException):
        return _omegaconf_line(cause, argv)
    if isinstance(e, HydraException):
        return f"config: {_first_line(str(e))}; fix: see `--help` and the yaml files under conf/"
    if isinstance(e, OSError) and e.filename:
        return (f"{e.filename}: {e.strerror or e}; fix: check the path and its permissions "
                "(the output directory is hydra.run.dir=...)")
    return None


def _report(line: str, prog: str | None, stream: TextIO | None) -> None:
    stream = stream or sys.stderr
    stream.write(f"{prog or os.path.basename(sys.argv[0])}: error: {line}\n")
    stream.flush()


def guard(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Decorate a Hydra task function (under ``@hydra.main``): a known user error raised
    while the job runs is reported in one line and exits with :data:`EXIT_USER_ERROR`
    (a ``SystemExit`` passes through Hydra, which would otherwise add its own lines)."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as e:  # known ones are reported, the rest re-raised
            line = format_error(e, sys.argv[1:])
            if line is None:
                raise
            _report(line, None, None)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper


def run_cli(main: Callable[[], Any], prog: str | None = None, stderr: TextIO | None = None) -> int:
    """Call a ``@hydra.main`` function; return 0, or :data:`EXIT_USER_ERROR` after a one-line report
    (errors of the config composition; those of the job itself are reported by :func:`guard`)."""
    had_flag = "HYDRA_FULL_ERROR" in os.environ
    if not had_flag:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as e:  # known ones are reported, the rest re-raised
        line = format_error(e, sys.argv[1:])
        if line is None:
            raise
        _report(line, prog, stderr)
        return EXIT_USER_ERROR
    finally:
        if not had_flag:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    return 0
