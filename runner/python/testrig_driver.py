"""testrig's Python side of the testrig-rpc/1 bridge (see PROTOCOL.md beside this file).

The runner starts `python3 -u -B testrig_driver.py`; this module connects to the runner, builds the globals a
nixpkgs NixOS test script expects (`start_all`, `machine`, `subtest`, `t`, ...), runs the script and reports the
outcome. Python is only the script language: every Machine method is one JSON request to the runner, which owns
the VMs, their sockets, every timeout and the log. Standard library only; Python 3.9 or newer.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import linecache
import os
import re
import socket
import sys
import threading
import time
import traceback
import unittest
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ContextManager, NoReturn, Optional, Union, overload

PROTOCOL = "testrig-rpc/1"
# A polling condition: it holds unless it raises or returns a false value other than None.
ConditionFn = Callable[[], Any]


# --- errors a test script can see -------------------------------------------------------------------------------


class TestScriptError(Exception):
    """Base of the errors that mean "the test failed" rather than "the driver is broken" (as in nixpkgs)."""


class RequestedAssertionFailed(TestScriptError):
    """An assertion the script asked for failed: a `t.assert*`, a `retry` that ran out of time."""


class MachineError(RequestedAssertionFailed):
    """The runner reported a failed or timed-out machine operation; the message is the runner's, `kind` its
    error kind (`failure` or `timeout`)."""

    kind = "failure"


class QmpEventTimeout(MachineError, TimeoutError):
    """`wait_for_qmp_event` saw no event its filter accepts in time. Also a TimeoutError, which nixpkgs raises."""


class PollingConditionError(TestScriptError):
    """A polling condition that was due failed before a machine command."""


class NotSupportedByTestrig(NotImplementedError):
    """A nixpkgs driver API that testrig does not implement (yet)."""


class RunnerConnectionLost(Exception):
    """The runner closed the connection or answered something that is not testrig-rpc/1."""


# --- durations ---------------------------------------------------------------------------------------------------

# A duration as test scripts give it, with the meaning nixpkgs' driver has given it since mid-2026 (its
# `test_driver/duration.py`): a `datetime.timedelta` is the preferred form; a bare int or float still means
# seconds, but is deprecated and warns; a bool is a TypeError (`timeout=True` is a mistake, not one second).
# The protocol carries seconds as numbers, so every duration is converted here, at the edge.
Duration = Union[dt.timedelta, int, float]

# nixpkgs' defaults, in one place.
DEFAULT_TIMEOUT = dt.timedelta(minutes=15)
DEFAULT_QMP_EVENT_TIMEOUT = dt.timedelta(minutes=10)
DEFAULT_POLLING_INTERVAL = dt.timedelta(seconds=2)
DEFAULT_KEY_DELAY = dt.timedelta(milliseconds=10)


def as_timedelta(duration: Duration) -> dt.timedelta:
    """`duration` as a timedelta; bare numbers are seconds. Anything else (bool, str, None) is a TypeError."""
    if isinstance(duration, dt.timedelta):
        return duration
    if isinstance(duration, bool):
        raise TypeError(f"expected a duration, got bool: {duration!r}")
    if isinstance(duration, (int, float)):
        return dt.timedelta(seconds=duration)
    raise TypeError(f"expected a timedelta, int, or float duration, got {type(duration).__name__}")


def as_seconds(duration: Duration) -> float:
    return as_timedelta(duration).total_seconds()


def warn_if_bare_number(duration: Any, func_name: str, stacklevel: int = 3) -> None:
    """nixpkgs' deprecation warning for a bare int/float duration. `stacklevel` 3 points at the test script's
    line when called from a method the script called, so each line warns once (Python's default filter)."""
    if duration is None or isinstance(duration, bool):
        return
    if isinstance(duration, (int, float)):
        warnings.warn(f"{func_name}(): passing a bare int/float as a duration is deprecated. "
                      "Use datetime.timedelta instead.", stacklevel=stacklevel)


def duration_seconds(duration: Any, func_name: str) -> float:
    """A method's duration argument as the seconds the protocol carries: coerced (TypeError for a bool or a
    non-number) and warned about when it is a bare number, as nixpkgs does."""
    seconds = as_seconds(duration)
    warn_if_bare_number(duration, func_name, stacklevel=4)
    return seconds


def optional_duration_seconds(duration: Any, func_name: str) -> Optional[float]:
    """Like `duration_seconds`, but None stays None (the runner's default: no timeout of its own)."""
    if duration is None:
        return None
    seconds = as_seconds(duration)
    warn_if_bare_number(duration, func_name, stacklevel=4)
    return seconds


def renamed_keyword(new_value: Any, old_value: Any, func_name: str, new: str, old: str, default: Any) -> Any:
    """A keyword nixpkgs renamed (`secs` → `duration`, `timeout_seconds` → `timeout`, `seconds_interval` →
    `interval`): the old name still works with a warning; both at once is a TypeError, as in nixpkgs."""
    if old_value is None:
        return default if new_value is None else new_value
    if new_value is not None:
        raise TypeError(f"{func_name}() got both {new!r} and {old!r} arguments. Pass only {new!r}")
    warnings.warn(f"{func_name}(): The {old!r} argument is deprecated. Use {new!r} instead.", stacklevel=3)
    return old_value


# --- the connection to the runner -------------------------------------------------------------------------------


def exit_runner_gone(message: str) -> NoReturn:
    """Leave the process at once: without the runner no machine call can succeed, and an exception could be
    swallowed by a script's `except Exception` inside a retry loop, which would hang the test."""
    sys.stderr.write(f"testrig_driver: {message}; exiting\n")
    sys.stderr.flush()
    os._exit(1)


class _Connection:
    """One unix stream connection: one request, then one response, in order."""

    def __init__(self, socket_path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(socket_path)
        except OSError:
            self._sock.close()
            raise
        self._reader = self._sock.makefile("rb")
        self._last_id = 0

    def exchange(self, op: str, args: dict[str, Any], machine: str | None) -> dict[str, Any]:
        self._last_id += 1
        request: dict[str, Any] = {"id": self._last_id, "op": op, "args": args}
        if machine is not None:
            request["machine"] = machine
        self._sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
        line = self._reader.readline()
        if not line.endswith(b"\n"):
            raise RunnerConnectionLost("the runner closed the connection")
        try:
            response = json.loads(line)
        except ValueError as e:
            raise RunnerConnectionLost(f"the runner sent a malformed response ({e}): {line[:200]!r}") from None
        if not isinstance(response, dict) or response.get("id") != self._last_id:
            raise RunnerConnectionLost(f"the runner answered request {self._last_id} with {line[:200]!r}")
        return response

    def close(self) -> None:
        self._reader.close()
        self._sock.close()


class RpcClient:
    """Sends requests to the runner. Each thread has its own connection, so a thread blocked in a long wait
    does not block another."""

    def __init__(self, socket_path: str, on_lost: Callable[[str], NoReturn] = exit_runner_gone) -> None:
        self._socket_path = socket_path
        self._on_lost = on_lost
        self._local = threading.local()
        self._all: list[_Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> _Connection:
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = _Connection(self._socket_path)
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    def _connection_or_lost(self, op: str) -> _Connection:
        try:
            return self._connection()
        except OSError as e:
            self._on_lost(f"cannot connect to the testrig runner at {self._socket_path} (for {op!r}): {e}")

    def _forget(self, connection: _Connection) -> None:
        self._local.connection = None
        with self._lock:
            self._all.remove(connection)
        connection.close()

    def connect(self) -> None:
        """Open this thread's connection now, so a runner that is already gone is noticed before the script runs."""
        self._connection_or_lost("connect")

    def call(self, op: str, args: dict[str, Any] | None = None, machine: str | None = None) -> Any:
        """Send one request and return its `ok` value; raise MachineError or RuntimeError for an `error`."""
        connection = self._connection_or_lost(op)
        try:
            response = connection.exchange(op, args or {}, machine)
        except (OSError, RunnerConnectionLost) as e:
            self._on_lost(f"lost the connection to the testrig runner at {self._socket_path} during {op!r}: {e}")
        except BaseException:
            # Interrupted (KeyboardInterrupt) between request and response: the answer would arrive out of turn,
            # so this connection is dropped and the next request opens a new one.
            self._forget(connection)
            raise
        if "error" in response:
            raise _error_from_response(response["error"])
        return response.get("ok")

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()
        self._local = threading.local()


def _error_from_response(error: Any) -> Exception:
    if not isinstance(error, dict):
        return RuntimeError(f"testrig runner: malformed error {error!r}")
    kind = error.get("kind")
    message = str(error.get("message", ""))
    if kind in ("failure", "timeout"):
        error = MachineError(message)
        error.kind = kind
        return error
    if kind == "bad_request":
        return RuntimeError(f"testrig runner rejected the request: {message}")
    return RuntimeError(f"testrig runner error of unknown kind {kind!r}: {message}")


def decode_output(output_b64: str) -> str:
    """Guest output bytes as a str that `.encode("utf-8", "surrogateescape")` turns back into the exact bytes."""
    return base64.b64decode(output_b64).decode("utf-8", "surrogateescape")


# --- logging -----------------------------------------------------------------------------------------------------


class Logger:
    """The `log` global: every line goes to the runner's log, which owns formatting and timing."""

    def __init__(self, client: RpcClient) -> None:
        self._client = client

    def log(self, message: str, attributes: dict[str, str] | None = None) -> None:
        self._client.call("log", {"message": _with_machine(message, attributes)})

    def info(self, message: str, attributes: dict[str, str] | None = None) -> None:
        self.log(message, attributes)

    def warning(self, message: str, attributes: dict[str, str] | None = None) -> None:
        self.log(f"warning: {message}", attributes)

    def error(self, message: str, attributes: dict[str, str] | None = None) -> None:
        self.log(f"error: {message}", attributes)

    def log_test_error(self, message: str, attributes: dict[str, str] | None = None) -> None:
        self.error(message, attributes)

    def log_serial(self, message: str, machine: str) -> None:
        self.log(f"{machine} # {message}")

    def print_serial_logs(self, enable: bool) -> None:
        self.log(f"serial output on stdout {'on' if enable else 'off'}: ignored, the testrig runner logs it")

    @contextmanager
    def nested(self, message: str, attributes: dict[str, str] | None = None) -> Iterator[None]:
        """A timed section of the log (`(finished: <message>, in N.NN seconds)`)."""
        self._client.call("nested_begin", {"message": _with_machine(message, attributes)})
        try:
            yield
        finally:
            self._client.call("nested_end", {})

    @contextmanager
    def subtest(self, name: str, attributes: dict[str, str] | None = None) -> Iterator[None]:
        """One JUnit testcase; an exception inside is reported and propagates (the test fails)."""
        self._client.call("subtest_begin", {"name": name})
        try:
            yield
        except BaseException as e:
            self._client.call("subtest_end", {"name": name, "ok": False, "message": _describe(e)})
            raise
        self._client.call("subtest_end", {"name": name, "ok": True, "message": None})


def _with_machine(message: str, attributes: dict[str, str] | None) -> str:
    machine = (attributes or {}).get("machine")
    return f"{machine}: {message}" if machine else message


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --- retry and polling conditions ---------------------------------------------------------------------------------


class Clock:
    """Monotonic time and sleep; replaced by a fake in the unit tests."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


CLOCK = Clock()


def retry(fn: Callable[[bool], Any], timeout: Optional[Duration] = None, *,
          timeout_seconds: Optional[Duration] = None) -> None:
    """Call `fn(False)` once a second until it returns true or `timeout` (default 15 minutes) has passed, then
    `fn(True)` once (the last try, when `fn` may print diagnostics); raise RequestedAssertionFailed if that fails
    too. `timeout_seconds` is the old name of `timeout`."""
    timeout = renamed_keyword(timeout, timeout_seconds, "retry", "timeout", "timeout_seconds", DEFAULT_TIMEOUT)
    limit = duration_seconds(timeout, "retry")
    start = CLOCK.monotonic()
    while CLOCK.monotonic() - start < limit:
        if fn(False):
            return
        CLOCK.sleep(1)
    elapsed = CLOCK.monotonic() - start
    if not fn(True):
        raise RequestedAssertionFailed(
            f"action timed out after {elapsed:.2f} seconds (timeout={limit:g})"
        )


class PollingCondition:
    """A check that must hold while it is active: run before a machine command when it is overdue."""

    def __init__(
        self,
        condition: ConditionFn,
        logger: Logger,
        seconds_interval: Optional[Duration] = None,
        description: str | None = None,
        *,
        interval: Optional[Duration] = None,
    ) -> None:
        self.condition = condition
        self.logger = logger
        self.interval = as_timedelta(renamed_keyword(interval, seconds_interval, "PollingCondition", "interval",
                                                     "seconds_interval", DEFAULT_POLLING_INTERVAL))
        self.description: str = (
            str(description) if description is not None
            else condition.__doc__ or str(getattr(condition, "__name__", repr(condition)))
        )
        self.last_called = float("-inf")
        self.entry_count = 0

    @property
    def overdue(self) -> bool:
        return self.last_called + self.interval.total_seconds() < CLOCK.monotonic()

    @property
    def entered(self) -> bool:
        return self.entry_count > 0

    def __enter__(self) -> None:
        self.entry_count += 1

    def __exit__(self, *_: object) -> None:
        self.entry_count -= 1
        self.last_called = CLOCK.monotonic()

    def check(self, force: bool = False) -> bool:
        """Run the condition if forced, or if it is overdue and not already running (it may itself call machine
        methods, which check conditions). Raising or returning a false value other than None is a failure."""
        if not force and (self.entered or not self.overdue):
            return True
        with self, self.logger.nested(f"Checking polling condition {self.description!r}"):
            since = CLOCK.monotonic() - self.last_called
            self.logger.info(f"Time since last: {since:.2f}s" if since != float("inf") else "(not called yet)")
            try:
                result = self.condition()
            except Exception as e:
                self.logger.info(f"condition raised {_describe(e)}")
                result = False
            ok = result is None or bool(result)
            self.logger.info(self.status_message(ok))
            return ok

    def maybe_raise(self) -> None:
        if not self.check():
            raise PollingConditionError(self.status_message(False))

    def status_message(self, ok: bool) -> str:
        return f"Polling condition {'succeeded' if ok else 'failed'}: {self.description}"


class Poll:
    """What `polling_condition` makes of a function: a context manager activating the condition, with `wait`."""

    def __init__(self, driver: Driver, fun: ConditionFn, interval: dt.timedelta,
                 description: str | None) -> None:
        self._driver = driver
        self.condition = PollingCondition(fun, driver.logger, description=description, interval=interval)

    def __enter__(self) -> None:
        self._driver.polling_conditions.append(self.condition)

    def __exit__(self, *_: object) -> None:
        removed = self._driver.polling_conditions.pop()
        assert removed is self.condition, "polling conditions must be left in the order they were entered"

    def wait(self, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        """Wait until the condition holds (retry semantics: once a second, then a last try)."""
        warn_if_bare_number(timeout, "wait")
        timeout = as_timedelta(timeout)
        logger = self._driver.logger

        def holds(last: bool) -> bool:
            if last:
                logger.info(f"Last chance for {self.condition.description}")
            ok = self.condition.check(force=True)
            if not ok and not last:
                logger.info(f"({self.condition.description} failure not fatal yet)")
            return ok

        with logger.nested(f"waiting for {self.condition.description}"):
            retry(holds, timeout)


# --- machines -----------------------------------------------------------------------------------------------------


def pythonize_name(name: str) -> str:
    """The global variable name nixpkgs gives a machine."""
    return re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", name)


def _unsupported(method: str) -> Callable[..., NoReturn]:
    def method_not_supported(self: Machine, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotSupportedByTestrig(f"Machine.{method}() is not supported by testrig yet (machine {self.name!r})")

    method_not_supported.__name__ = method
    method_not_supported.__doc__ = "Not supported by testrig yet: raises NotSupportedByTestrig."
    return method_not_supported


class MachineInfo:
    """What the session file says of a machine: fixed for the run."""

    def __init__(self, name: str, python_name: str | None = None, start_command: str = "", state_dir: str = "",
                 shared_dir: str = "", keep_machine_state: bool = False) -> None:
        self.name = name
        self.python_name = python_name or pythonize_name(name)
        self.start_command = start_command
        self.state_dir = state_dir
        self.shared_dir = shared_dir
        self.keep_machine_state = keep_machine_state

    @classmethod
    def from_session(cls, data: dict[str, Any]) -> MachineInfo:
        name = str(data["name"])
        return cls(name, data.get("python_name"), str(data.get("start_command") or ""),
                   str(data.get("state_dir") or ""), str(data.get("shared_dir") or ""),
                   bool(data.get("keep_machine_state", False)))


class StartCommand(str):
    """The machine's start command as a string, with nixpkgs' `QemuStartCommand.machine_name` (the name the
    `run-<name>-vm` pattern gives, else "machine")."""

    @property
    def machine_name(self) -> str:
        match = re.search("run-(.+)-vm$", self)
        return match.group(1) if match else "machine"

    @property
    def _cmd(self) -> str:
        """Where nixpkgs' QemuStartCommand keeps the command (scripts have read it)."""
        return str(self)


class MachineProcess:
    """`machine.process`: QEMU's process, read through the runner (which owns it)."""

    def __init__(self, machine: Machine) -> None:
        self._machine = machine

    @property
    def pid(self) -> Optional[int]:
        return self._machine._status()["pid"]

    @property
    def returncode(self) -> Optional[int]:
        """The exit code, minus the signal that ended it, or None while it runs (as Popen's)."""
        return self._machine._status()["exit_code"]

    def poll(self) -> Optional[int]:
        return self.returncode

    def __repr__(self) -> str:
        return f"<MachineProcess of {self._machine.name!r}>"


class Machine:
    """A handle to one VM of the test. Each method is one request to the runner, which logs it as a timed section.

    Before every method that runs a guest or monitor command, the active polling conditions that are overdue are
    checked (nixpkgs does this in `execute` and `send_monitor_command`). Lifecycle and console-log methods
    (`start`, `shutdown`, `is_up`, `wait_for_shutdown`, `release`, `wait_for_console_text`, `get_console_log`,
    `send_console`, `connect`) do not check them, as in nixpkgs.
    """

    def __init__(self, name: str, client: RpcClient, logger: Logger, out_dir: Path,
                 callbacks: list[Callable[[], None]] | None = None, info: MachineInfo | None = None) -> None:
        self.name = name
        self.out_dir = out_dir
        self.callbacks: list[Callable[[], None]] = callbacks if callbacks is not None else []
        self._client = client
        self.logger = logger
        info = info or MachineInfo(name)
        # nixpkgs' attributes, with its meaning: fixed for the run, so read once from the session.
        self.start_command = StartCommand(info.start_command)
        self.keep_machine_state = info.keep_machine_state
        self.state_dir = Path(info.state_dir)
        self.shared_dir = Path(info.shared_dir)
        self.monitor_path = self.state_dir / "monitor"
        self.shell_path = self.state_dir / "shell"
        self.qmp_path = self.state_dir / "qmp"

    # nixpkgs' attributes that change as the machine runs: asked of the runner, which owns the process.

    @property
    def keep_vm_state(self) -> bool:
        """Old name of `keep_machine_state`."""
        return self.keep_machine_state

    def _status(self) -> dict[str, Any]:
        return dict(self._client.call("status", {}, machine=self.name))

    @property
    def pid(self) -> Optional[int]:
        """The PID of the machine's QEMU (its start script), None before the first start."""
        return self._status()["pid"]

    @property
    def booted(self) -> bool:
        """QEMU is running."""
        return bool(self._status()["booted"])

    @property
    def connected(self) -> bool:
        """The backdoor shell has answered in this boot."""
        return bool(self._status()["connected"])

    @property
    def process(self) -> Optional[MachineProcess]:
        """A view of QEMU's process in the shape of nixpkgs' `subprocess.Popen` (pid, poll(), returncode), or
        None before the first start. The runner owns the process; this only reads its state."""
        return MachineProcess(self) if self._status()["pid"] is not None else None

    def __repr__(self) -> str:
        return f"<Machine '{self.name}'>"

    def _call(self, op: str, args: dict[str, Any] | None = None, *, check_conditions: bool = True) -> Any:
        if check_conditions:
            self.run_callbacks()
        return self._client.call(op, args or {}, machine=self.name)

    def run_callbacks(self) -> None:
        for callback in self.callbacks:
            callback()

    # logging

    def log(self, msg: str) -> None:
        self.logger.log(msg, {"machine": self.name})

    def nested(self, msg: str, attrs: dict[str, str] | None = None) -> ContextManager[None]:
        return self.logger.nested(msg, {**(attrs or {}), "machine": self.name})

    # lifecycle

    def start(self, allow_reboot: bool = False) -> None:
        """Start the VM; returns once QEMU runs, before the guest has booted."""
        self._call("start", {"allow_reboot": allow_reboot}, check_conditions=False)

    def shutdown(self) -> None:
        """`poweroff` in the guest, then wait for QEMU to exit."""
        self._call("shutdown", check_conditions=False)

    def crash(self) -> None:
        """Simulate a power failure (monitor `quit`)."""
        self._call("crash")

    def reboot(self) -> None:
        """Press Ctrl+Alt+Delete; the next command waits for the backdoor shell again (start with
        `allow_reboot=True` for the guest to come back)."""
        self._call("reboot")

    def is_up(self) -> bool:
        return bool(self._call("is_up", check_conditions=False))

    def wait_for_shutdown(self) -> None:
        self._call("wait_for_shutdown", check_conditions=False)

    def connect(self) -> None:
        """Wait until the backdoor shell is ready (starting the machine if needed). The runner connects by
        itself before any command; this runs `true` in the guest to wait for that point."""
        self._call("execute", {"command": "true", "timeout": None, "check_output": True, "check_return": True},
                   check_conditions=False)

    def release(self) -> None:
        """Terminate the VM without a clean shutdown."""
        self._call("release", check_conditions=False)

    # commands

    def execute(self, command: str, check_return: bool = True, check_output: bool = True,
                timeout: Optional[Duration] = DEFAULT_TIMEOUT) -> tuple[int, str]:
        """Run `command` in the guest shell (with `set -euo pipefail`); return (exit status, stdout).
        Without check_output the status is -2 and the output empty; without check_return the status is -1.
        `timeout=None` waits as long as the command runs."""
        seconds = optional_duration_seconds(timeout, "execute")
        result = self._call("execute", {"command": command, "timeout": seconds, "check_output": check_output,
                                        "check_return": check_return})
        if not check_output:
            return (-2, "")
        output = decode_output(result["output_b64"])
        if not check_return:
            return (-1, output)
        return (int(result["status"]), output)

    def succeed(self, *commands: str, timeout: Optional[Duration] = None) -> str:
        """Run each command, failing the test on the first non-zero exit status; return the outputs joined."""
        seconds = optional_duration_seconds(timeout, "succeed")
        result = self._call("succeed", {"commands": list(commands), "timeout": seconds})
        return decode_output(result["output_b64"])

    def fail(self, *commands: str, timeout: Optional[Duration] = None) -> str:
        """Like `succeed`, but each command must exit non-zero."""
        seconds = optional_duration_seconds(timeout, "fail")
        result = self._call("fail", {"commands": list(commands), "timeout": seconds})
        return decode_output(result["output_b64"])

    def wait_until_succeeds(self, command: str, timeout: Duration = DEFAULT_TIMEOUT) -> str:
        result = self._call("wait_until_succeeds", {"command": command, "timeout": duration_seconds(timeout, "wait_until_succeeds")})
        return decode_output(result["output_b64"])

    def wait_until_fails(self, command: str, timeout: Duration = DEFAULT_TIMEOUT) -> str:
        result = self._call("wait_until_fails", {"command": command, "timeout": duration_seconds(timeout, "wait_until_fails")})
        return decode_output(result["output_b64"])

    def sleep(self, duration: Optional[Duration] = None, *, secs: Optional[Duration] = None) -> None:
        """Sleep in guest time. `secs` is the old name of `duration`."""
        duration = renamed_keyword(duration, secs, "sleep", "duration", "secs", None)
        if duration is None:
            raise TypeError("sleep() missing 1 required argument: 'duration'")
        self._call("sleep", {"secs": duration_seconds(duration, "sleep")})

    # systemd

    def systemctl(self, q: str, user: str | None = None) -> tuple[int, str]:
        result = self._call("systemctl", {"q": q, "user": user})
        return (int(result["status"]), decode_output(result["output_b64"]))

    def start_job(self, jobname: str, user: str | None = None) -> tuple[int, str]:
        return self.systemctl(f"start {jobname}", user)

    def stop_job(self, jobname: str, user: str | None = None) -> tuple[int, str]:
        return self.systemctl(f"stop {jobname}", user)

    def wait_for_unit(self, unit: str, user: str | None = None, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        seconds = duration_seconds(timeout, "wait_for_unit")
        self._call("wait_for_unit", {"unit": unit, "user": user, "timeout": seconds})

    def get_unit_info(self, unit: str, user: str | None = None) -> dict[str, str]:
        return dict(self._call("get_unit_info", {"unit": unit, "user": user}))

    def get_unit_property(self, unit: str, property: str, user: str | None = None) -> str:
        return str(self._call("get_unit_property", {"unit": unit, "property": property, "user": user}))

    def require_unit_state(self, unit: str, require_state: str = "active") -> None:
        self._call("require_unit_state", {"unit": unit, "state": require_state})

    # waiting

    def wait_for_file(self, filename: str, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        self._call("wait_for_file", {"path": filename, "timeout": duration_seconds(timeout, "wait_for_file")})

    def wait_for_open_port(self, port: int, addr: str = "localhost", timeout: Duration = DEFAULT_TIMEOUT) -> None:
        seconds = duration_seconds(timeout, "wait_for_open_port")
        self._call("wait_for_open_port", {"port": port, "addr": addr, "timeout": seconds})

    def wait_for_closed_port(self, port: int, addr: str = "localhost", timeout: Duration = DEFAULT_TIMEOUT) -> None:
        seconds = duration_seconds(timeout, "wait_for_closed_port")
        self._call("wait_for_closed_port", {"port": port, "addr": addr, "timeout": seconds})

    def wait_for_open_unix_socket(self, addr: str, is_datagram: bool = False,
                                  timeout: Duration = DEFAULT_TIMEOUT) -> None:
        seconds = duration_seconds(timeout, "wait_for_open_unix_socket")
        self._call("wait_for_open_unix_socket", {"path": addr, "is_datagram": is_datagram, "timeout": seconds})

    def wait_for_console_text(self, regex: str, timeout: Optional[Duration] = None) -> str:
        """Wait until `regex` matches the serial console output; return the matched text. `timeout=None` waits
        as long as the test runs."""
        seconds = optional_duration_seconds(timeout, "wait_for_console_text")
        return str(self._call("wait_for_console_text", {"regex": regex, "timeout": seconds},
                              check_conditions=False))

    def get_console_log(self) -> str:
        return str(self._call("get_console_log", check_conditions=False))

    # monitor, screen and keys

    def send_monitor_command(self, command: str) -> str:
        return str(self._call("send_monitor_command", {"command": command}))

    def screenshot(self, filename: str) -> str:
        """Save the screen as PNG in the output dir; return its path."""
        return str(self._call("screenshot", {"name": filename}))

    def send_key(self, key: str, delay: Optional[Duration] = DEFAULT_KEY_DELAY, log: bool | None = True) -> None:
        """Press a key (QEMU `sendkey` syntax, or a single character), then pause `delay`."""
        seconds = optional_duration_seconds(delay, "send_key")
        self._call("send_key", {"key": key})
        if seconds is not None:
            CLOCK.sleep(seconds)

    def send_chars(self, chars: str, delay: Optional[Duration] = DEFAULT_KEY_DELAY) -> None:
        """Type `chars` on the virtual keyboard (the runner paces the keys)."""
        optional_duration_seconds(delay, "send_chars")
        self._call("send_chars", {"chars": chars})

    def send_console(self, chars: str) -> None:
        """Write `chars` to QEMU's stdin (the serial console)."""
        self._call("send_console", {"chars": chars}, check_conditions=False)

    def forward_port(self, host_port: int = 8080, guest_port: int = 80) -> None:
        self._call("forward_port", {"host_port": host_port, "guest_port": guest_port})

    def block(self) -> None:
        """Unplug the cable of the first vlan NIC."""
        self._call("block")

    def unblock(self) -> None:
        self._call("unblock")

    # files

    def copy_from_host(self, source: str, target: str) -> None:
        """Copy a host file or directory to `target` in the guest (through the shared dir)."""
        self._call("copy_from_host", {"source": os.path.abspath(source), "target": target})

    def copy_from_host_via_shell(self, source: str, target: str) -> None:
        """Copy a host file into the guest through the shell, without the shared dir."""
        with open(source, "rb") as f:
            content = base64.b64encode(f.read()).decode("ascii")
        self.succeed(f"mkdir -p $(dirname {target})", f"echo -n {content} | base64 -d > {target}")

    def copy_from_machine(self, source: str, target_dir: str = "") -> None:
        """Copy a guest file or directory into `target_dir` relative to the output dir."""
        self._call("copy_from_machine", {"source": source, "target_dir": target_dir})

    def copy_from_vm(self, source: str, target_dir: str = "") -> None:
        """Old name of `copy_from_machine`."""
        self.copy_from_machine(source, target_dir)

    # virtual consoles (the guest's /dev/vcsN), as nixpkgs reads them

    def get_tty_text(self, tty: str) -> str:
        """The text on virtual console `tty`, folded to the console's width."""
        status, output = self.execute(
            f"fold -w$(stty -F /dev/tty{tty} size | awk '{{print $2}}') /dev/vcs{tty}")
        return output

    def wait_until_tty_matches(self, tty: str, regexp: str, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        """Wait until the text of virtual console `tty` matches `regexp` (Python syntax, as in nixpkgs)."""
        warn_if_bare_number(timeout, "wait_until_tty_matches")
        timeout = as_timedelta(timeout)
        matcher = re.compile(regexp)

        def tty_matches(last_try: bool) -> bool:
            text = self.get_tty_text(tty)
            if last_try:
                self.log(f"last chance to match /{regexp}/ on TTY{tty}, which currently contains: {text}")
            return bool(matcher.search(text))

        with self.nested(f"waiting for {regexp} to appear on tty {tty}"):
            retry(tty_matches, timeout)

    def dump_tty_contents(self, tty: str) -> None:
        """Log the text of virtual console `tty`."""
        self.execute(f"fold -w 80 /dev/vcs{tty} | systemd-cat")

    def shell_interact(self, address: str | None = None) -> None:
        """With an `address` (a socat address such as `tcp-listen:4444,reuseaddr` or `unix-listen:/tmp/sh.sock`),
        as in nixpkgs: the runner runs `socat <address> FD:<backdoor shell>`, so whoever connects there gets the
        guest's raw root shell (no prompt, no echo) until they disconnect; the script waits meanwhile, and the
        shell is usable by the script again afterwards (do not type `exit`: it ends the backdoor). Ctrl-C ends it.

        Without an address, a line-by-line shell for `-I` sessions: each line runs as one command through the
        backdoor (its own `bash -c`, so `cd` and variables do not carry over) and its output and non-zero status
        are printed. Ctrl-D returns to the Python prompt."""
        if address is not None:
            try:
                self._call("shell_interact", {"address": address}, check_conditions=False)
            except KeyboardInterrupt:
                pass  # as in nixpkgs: a person ending the session does not end the test
            return
        print(f"{self.name}: guest shell, one command per line; Ctrl-D returns to Python", flush=True)
        while True:
            try:
                line = input(f"{self.name}# ")
            except EOFError:
                print(flush=True)
                return
            if not line.strip():
                continue
            status, output = self.execute(line, timeout=None)
            sys.stdout.write(output)
            if output and not output.endswith("\n"):
                sys.stdout.write("\n")
            if status != 0:
                sys.stdout.write(f"[exit status {status}]\n")
            sys.stdout.flush()

    def wait_for_qmp_event(self, event_filter: Callable[[dict[str, Any]], bool],
                           timeout: Duration = DEFAULT_QMP_EVENT_TIMEOUT) -> dict[str, Any]:
        """Wait for a QMP event (a dict with `event`, `data`, `timestamp`) that `event_filter` accepts and return it.
        Events come in order from the QMP connection opened when the machine started (so one that happened before
        this call, such as the `SHUTDOWN` of a `poweroff`, is still there); those the filter rejects are consumed,
        as in nixpkgs. Raises QmpEventTimeout (a TimeoutError) after `timeout` (default 10 minutes), and
        MachineError when the machine was never started or QEMU has exited and its events are all read."""
        seconds = duration_seconds(timeout, "wait_for_qmp_event")
        deadline = CLOCK.monotonic() + seconds
        while True:
            remaining = max(0.0, deadline - CLOCK.monotonic())
            try:
                event = self._call("next_qmp_event", {"timeout": remaining}, check_conditions=False)
            except MachineError as e:
                if e.kind != "timeout":
                    raise
                event = None
            if event is not None and event_filter(event):
                return event
            if event is None or CLOCK.monotonic() >= deadline:
                raise QmpEventTimeout(f"{self.name}: no QMP event the filter accepts within {seconds:g} seconds")

    # the screen, read by OCR (the runner takes a screendump and runs tesseract; the test must set enableOCR)

    def get_screen_text_variants(self) -> list[str]:
        """Several readings of the screen by OCR: tesseract on the screenshot as it is and on two images
        ImageMagick prepared from it (nixpkgs' preprocessing), so that more words are found."""
        return [str(text) for text in self._call("get_screen_text", {"variants": True})]

    def get_screen_text(self) -> str:
        """The text on the screen, read by OCR from the screenshot as it is."""
        return str(self._call("get_screen_text", {"variants": False})[0])

    def wait_for_text(self, regex: str, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        """Wait until `regex` (Python syntax, `re.search`) matches the text on the screen, retrying once a second
        as nixpkgs does. Each try reads the screenshot as it is first and the prepared variants only when that
        does not match: the same texts nixpkgs tries, without preparing variants that are not needed."""
        warn_if_bare_number(timeout, "wait_for_text")
        timeout = as_timedelta(timeout)

        def screen_matches(last_try: bool) -> bool:
            if re.search(regex, self.get_screen_text()) is not None:
                return True
            variants = self.get_screen_text_variants()
            if any(re.search(regex, text) is not None for text in variants):
                return True
            if last_try:
                self.log(f"Last OCR attempt failed. Text was: {variants}")
            return False

        with self.nested(f"waiting for {regex} to appear on screen"):
            retry(screen_matches, timeout)

    # not supported yet

    wait_for_x = _unsupported("wait_for_x")
    wait_for_window = _unsupported("wait_for_window")
    get_window_names = _unsupported("get_window_names")
    switch_root = _unsupported("switch_root")

    def console_interact(self) -> None:
        """Forwards what is typed to the serial console (QEMU's stdin) until Ctrl-D or Ctrl-C, as nixpkgs' does;
        what the guest writes to the console shows in the log as `<machine> # ...`. For -I sessions."""
        self.log("Terminal is ready (there is no initial prompt):")
        while True:
            try:
                line = sys.stdin.readline()
            except KeyboardInterrupt:
                break
            if line == "":
                self.log("Closing connection to the console")
                break
            self.send_console(line)


# nixpkgs exposes these to scripts for type annotations and subclassing (QemuMachine since 2026).
BaseMachine = Machine
QemuMachine = Machine


class VLan:
    """A vlan of the test; the runner owns its switch."""

    def __init__(self, nr: int) -> None:
        self.nr = nr

    def __repr__(self) -> str:
        return f"<VLan {self.nr}>"


class AssertionTester(unittest.TestCase):
    """The `t` global: unittest assertions whose failures are test failures."""

    failureException = RequestedAssertionFailed

    def __init__(self) -> None:
        super().__init__()
        self.maxDiff = None


class DebugNop:
    """The `debug` global: testrig has no debug hook, so `breakpoint()` only logs."""

    def __init__(self, logger: Logger) -> None:
        self._logger = logger

    def breakpoint(self, host: str = "127.0.0.1", port: int = 4444) -> None:
        self._logger.warning("debug.breakpoint() is not supported by testrig; continuing")


# --- the session and the driver -------------------------------------------------------------------------------------


class Session:
    """The runner's description of this run (the `TESTRIG_SESSION` file)."""

    def __init__(self, data: dict[str, Any]) -> None:
        if data.get("protocol") != PROTOCOL:
            raise ValueError(f"session protocol is {data.get('protocol')!r}, this driver speaks {PROTOCOL!r}")
        self.machines: list[MachineInfo] = [MachineInfo.from_session(m) for m in data["machines"]]
        self.vlans: list[int] = [int(v) for v in data.get("vlans", [])]
        self.test_script_path = str(data["test_script"])
        self.test_script_name = str(data.get("test_script_name") or "testScript")
        self.out_dir = Path(data.get("out_dir") or os.getcwd())
        self.interactive = bool(data.get("interactive", False))
        self.debug_on_failure = bool(data.get("debug_on_failure", False))

    @classmethod
    def load(cls, path: str) -> Session:
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    def read_test_script(self) -> str:
        with open(self.test_script_path, encoding="utf-8") as f:
            return f.read()


class Driver:
    """The `driver` global: machines, vlans, polling conditions, and running the test script."""

    def __init__(self, client: RpcClient, machines: list[MachineInfo], vlans: list[int], test_script: str,
                 test_script_name: str, out_dir: Path) -> None:
        self.client = client
        self.logger = Logger(client)
        self.debug = DebugNop(self.logger)
        self.out_dir = out_dir
        self.tests = test_script
        self.test_script_name = test_script_name
        self.polling_conditions: list[PollingCondition] = []
        self.machines_qemu: list[Machine] = [
            Machine(info.name, client, self.logger, out_dir, callbacks=[self.check_polling_conditions], info=info)
            for info in machines
        ]
        self.machines_nspawn: list[Machine] = []
        self.vlans: list[VLan] = [VLan(nr) for nr in vlans]
        self._python_names: dict[str, str] = {info.name: info.python_name for info in machines}
        register_script_source(test_script_name, test_script)

    @property
    def machines(self) -> list[Machine]:
        return sorted(self.machines_qemu + self.machines_nspawn, key=lambda m: m.name)

    def start_all(self) -> None:
        self.client.call("start_all")

    def join_all(self) -> None:
        self.client.call("join_all")

    def subtest(self, name: str) -> ContextManager[None]:
        return self.logger.subtest(name)

    def check_polling_conditions(self) -> None:
        for condition in list(self.polling_conditions):
            condition.maybe_raise()

    @overload
    def polling_condition(self, fun_: ConditionFn, *, interval: Optional[Duration] = ...,
                          seconds_interval: Optional[Duration] = ...,
                          description: str | None = ...) -> Poll: ...

    @overload
    def polling_condition(self, fun_: None = ..., *, interval: Optional[Duration] = ...,
                          seconds_interval: Optional[Duration] = ...,
                          description: str | None = ...) -> Callable[[ConditionFn], Poll]: ...

    def polling_condition(self, fun_: ConditionFn | None = None, *, interval: Optional[Duration] = None,
                          seconds_interval: Optional[Duration] = None,
                          description: str | None = None) -> Poll | Callable[[ConditionFn], Poll]:
        """`@polling_condition` or `@polling_condition(interval=timedelta(...), description=...)`; use the result
        as a context manager (`with cond:`) to make the condition active. `seconds_interval` is the old name of
        `interval`; the default is 2 seconds."""
        given = renamed_keyword(interval, seconds_interval, "polling_condition", "interval", "seconds_interval",
                                DEFAULT_POLLING_INTERVAL)
        if seconds_interval is None:  # the old keyword has warned already
            warn_if_bare_number(given, "polling_condition")
        interval = as_timedelta(given)

        def make(fun: ConditionFn) -> Poll:
            return Poll(self, fun, interval, description)

        return make if fun_ is None else make(fun_)

    def serial_stdout_on(self) -> None:
        self.logger.print_serial_logs(True)

    def serial_stdout_off(self) -> None:
        self.logger.print_serial_logs(False)

    def create_machine(self, start_command: str | dict[str, Any], *, name: str | None = None,
                       keep_machine_state: bool = False, keep_vm_state: bool | None = None) -> Machine:
        """A QEMU machine started from `start_command`, a shell command line (the driver's QEMU arguments are
        appended), as nixpkgs' `create_machine`: named `name`, else by `run-(.+)-vm$` in the command, else
        `machine`; its state dir is emptied unless `keep_machine_state`. It is not started here, not in
        `machines` (so `start_all` and `join_all` leave it alone) and checks no polling conditions, as in nixpkgs;
        the runner stops it at the end of the run. `keep_vm_state` is the old name of `keep_machine_state`, and
        the pre-24.05 form `create_machine({"startCommand": ..., "name": ..., "keep_vm_state": ...})` works too."""
        if isinstance(start_command, dict):
            if name is not None or keep_machine_state or keep_vm_state is not None:
                raise TypeError("Dictionary passed to create_machine must be the only argument")
            args = dict(start_command)
            command = args.pop("startCommand", None)
            if command is None:
                raise TypeError("Dictionary passed to create_machine must contain startCommand")
            name = args.pop("name", None)
            keep_machine_state = bool(args.pop("keep_vm_state", False)) or bool(args.pop("keepVmState", False))
            if args:
                raise TypeError(f"Unsupported arguments passed to create_machine: {args}")
            warnings.warn("create_machine() with a single dictionary argument is deprecated; use "
                          "create_machine(start_command, name=..., keep_machine_state=...)", stacklevel=2)
            start_command = command
        elif keep_vm_state is not None:
            keep_machine_state = renamed_keyword(keep_machine_state or None, keep_vm_state, "create_machine",
                                                 "keep_machine_state", "keep_vm_state", False)
        if not isinstance(start_command, str):
            raise TypeError(f"startCommand must be a string, got: {start_command!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got: {name!r}")
        created = self.client.call("create_machine", {"start_command": start_command, "name": name,
                                                      "keep_machine_state": bool(keep_machine_state)})
        info = MachineInfo.from_session(created)
        return Machine(info.name, self.client, self.logger, self.out_dir, callbacks=[], info=info)

    def test_symbols(self) -> dict[str, Any]:
        symbols: dict[str, Any] = dict(
            start_all=self.start_all,
            join_all=self.join_all,
            test_script=self.test_script,
            run_tests=self.run_tests,
            machines=self.machines,
            machines_qemu=self.machines_qemu,
            machines_nspawn=self.machines_nspawn,
            vlans=self.vlans,
            driver=self,
            log=self.logger,
            os=os,
            create_machine=self.create_machine,
            subtest=self.subtest,
            retry=retry,
            serial_stdout_off=self.serial_stdout_off,
            serial_stdout_on=self.serial_stdout_on,
            polling_condition=self.polling_condition,
            BaseMachine=BaseMachine,
            QemuMachine=QemuMachine,
            Machine=Machine,
            t=AssertionTester(),
            debug=self.debug,
        )
        for m in self.machines:
            symbols[self._python_names[m.name]] = m
        if len(self.machines) == 1:
            symbols["machine"] = self.machines[0]
        for vlan in self.vlans:
            symbols[f"vlan{vlan.nr}"] = vlan
        return symbols

    def test_script(self) -> None:
        """Run the test script (its exceptions propagate)."""
        code = compile(self.tests, self.test_script_name, "exec")
        exec(code, self.test_symbols())

    def run_tests(self) -> None:
        self.test_script()

    def run(self, debug_on_failure: bool = False) -> int:
        """Run the script, report the result to the runner, return the exit status (0 pass, 1 fail). With
        `debug_on_failure`, a failure first opens a prompt (`--debug-on-failure`)."""
        failure: BaseException
        try:
            self.test_script()
        except SystemExit as e:
            if e.code is None or e.code == 0:
                return self._report_success()
            failure = e
        except BaseException as e:
            failure = e
        else:
            return self._report_success()
        if debug_on_failure:
            self.debug_failure(failure)
        return self._report_failure(failure)

    def interact(self) -> int:
        """`-I`: a Python prompt with the test's globals, as nixpkgs' interactive driver gives; the run ends with
        the prompt (Ctrl-D or `exit()`). Exceptions are shown at the prompt and do not end it."""
        prompt("testrig interactive: the test's globals are here. test_script() runs the whole script, "
               "start_all() boots every machine, <machine>.succeed(...) runs a command. Ctrl-D ends the run.",
               self.test_symbols())
        return self._report_success()

    def debug_failure(self, failure: BaseException) -> None:
        """`--debug-on-failure`: the failure, then a prompt with the test's globals while the machines still run;
        the runner stops the global timeout when told the prompt opens."""
        self.client.call("debug_prompt", {})
        sys.stderr.write(format_failure(failure, self.test_script_name))
        symbols = self.test_symbols()
        symbols["exc"] = failure
        symbols["pm"] = lambda: post_mortem(failure, self.test_script_name)
        prompt("testrig: the test script failed (above) and its machines are still running. The exception is `exc`, "
               "pm() opens the post-mortem debugger, <machine>.succeed(...) runs a command. Ctrl-D ends the run, "
               "which fails.", symbols)

    def ignore_breakpoint(self, *args: Any, **kwargs: Any) -> None:
        """`breakpoint()` where Python has no terminal (stdin is /dev/null, as in a Nix build): pdb would end the
        test with BdbQuit, so the call is skipped with a note of where it is and how to stop there."""
        caller = sys._getframe(1)
        where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
        self.logger.warning(f"breakpoint() at {where} skipped: Python has no terminal in this run "
                            "(testrig run --debug-on-failure or -I stops there)")

    def _report_success(self) -> int:
        self.client.call("result", {"ok": True})
        return 0

    def _report_failure(self, e: BaseException) -> int:
        failure = format_failure(e, self.test_script_name)
        # The runner logs the traceback (to the terminal and to the run's log file), so it is not printed here.
        self.client.call("result", {"ok": False, "message": failure_message(e, self.test_script_name),
                                    "traceback": failure})
        return 1


# --- failure reporting ----------------------------------------------------------------------------------------------


def prompt(banner: str, symbols: dict[str, Any]) -> None:
    """A Python prompt on the terminal with `symbols` as its globals, until Ctrl-D or `exit()`."""
    import code

    try:
        import readline  # noqa: F401  (line editing and history at the prompt)
    except ImportError:
        pass
    try:
        code.interact(banner=banner, local=symbols, exitmsg="")
    except SystemExit:
        pass


def post_mortem(failure: BaseException, script_name: str) -> None:
    """pdb on the frame of the test script's line that failed (not in the driver's code below it, where
    `pdb.post_mortem` would start); `up`/`down` walk the stack as usual."""
    import pdb

    frame = None
    tb = failure.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == script_name:
            frame = tb.tb_frame
        tb = tb.tb_next
    debugger = pdb.Pdb()
    debugger.reset()
    if frame is None:
        debugger.interaction(None, failure.__traceback__)
    else:
        debugger.interaction(frame, None)


def register_script_source(script_name: str, text: str) -> None:
    """Let tracebacks show the script's lines: they come from linecache, and an entry without an mtime is never
    invalidated (the name need not be a file that exists). pdb looks names up made absolute, so that too."""
    for name in {script_name, os.path.abspath(script_name)}:
        linecache.cache[name] = (len(text), None, text.splitlines(True), name)


def script_frames(e: BaseException, script_name: str) -> list[traceback.FrameSummary]:
    return [frame for frame in traceback.extract_tb(e.__traceback__) if frame.filename == script_name]


def format_failure(e: BaseException, script_name: str) -> str:
    """The traceback of `e` reduced to the test script's frames, then the exception line(s); a SyntaxError
    shows its line and caret."""
    frames = script_frames(e, script_name)
    parts: list[str] = []
    if frames:
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_list(frames))
    parts.extend(traceback.format_exception_only(type(e), e))
    return "".join(parts)


def failure_message(e: BaseException, script_name: str) -> str:
    """One line: where in the script, and the exception (`testScript:12: MachineError: ...`)."""
    exception_line = traceback.format_exception_only(type(e), e)[-1].strip()
    if isinstance(e, SyntaxError) and e.filename == script_name and e.lineno is not None:
        return f"{script_name}:{e.lineno}: {exception_line}"
    frames = script_frames(e, script_name)
    if frames:
        return f"{script_name}:{frames[-1].lineno}: {exception_line}"
    return exception_line


# --- entry point ----------------------------------------------------------------------------------------------------


def main() -> int:
    socket_path = os.environ.get("TESTRIG_RPC_SOCKET")
    session_path = os.environ.get("TESTRIG_SESSION")
    if not socket_path or not session_path:
        sys.stderr.write("testrig_driver: TESTRIG_RPC_SOCKET and TESTRIG_SESSION must be set; "
                         "this file is run by the testrig runner\n")
        return 1
    try:
        session = Session.load(session_path)
        script = session.read_test_script()
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.stderr.write(f"testrig_driver: cannot read the session {session_path}: {e}\n")
        return 1
    client = RpcClient(socket_path)
    client.connect()
    driver = Driver(client, session.machines, session.vlans, script, session.test_script_name, session.out_dir)
    if not (session.interactive or session.debug_on_failure):
        sys.breakpointhook = driver.ignore_breakpoint
    try:
        return driver.interact() if session.interactive else driver.run(session.debug_on_failure)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
