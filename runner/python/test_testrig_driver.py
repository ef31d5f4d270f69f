"""Unit tests of testrig_driver.py, the Python client of testrig-rpc/1.

Pure parts are tested directly; parts that talk to the runner use FakeRunner, an in-process unix-socket server
that answers the protocol and records every request. Run: python3 -m unittest discover -s runner/python -v
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
import warnings
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import testrig_driver as td

DRIVER_FILE = Path(td.__file__).resolve()
SCRIPT_NAME = "testScript"


# --- helpers --------------------------------------------------------------------------------------------------------


class RunnerError(Exception):
    """Raised by a FakeRunner handler to answer with an `error` response."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class CloseConnection(Exception):
    """Raised by a FakeRunner handler to close the connection instead of answering."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


DEFAULT_RESULTS: dict[str, Any] = {
    "execute": {"status": 0, "output_b64": ""},
    "succeed": {"output_b64": ""},
    "fail": {"output_b64": ""},
    "wait_until_succeeds": {"output_b64": ""},
    "wait_until_fails": {"output_b64": ""},
    "systemctl": {"status": 0, "output_b64": ""},
    "is_up": True,
    "get_unit_info": {"ActiveState": "active"},
    "get_unit_property": "active",
    "send_monitor_command": "(qemu) ",
    "wait_for_console_text": "",
    "get_console_log": "",
    "screenshot": "/out/shot.png",
}


class FakeRunner:
    """A unix-socket server speaking testrig-rpc/1: one thread per connection, answers from `handler`
    (default: DEFAULT_RESULTS, null for anything else), records (connection number, request) pairs."""

    def __init__(self, handler: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="trd")
        self.path = os.path.join(self.dir, "rpc.sock")
        self.handler = handler or (lambda request: DEFAULT_RESULTS.get(request["op"]))
        self.requests: list[tuple[int, dict[str, Any]]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(8)
        self._server.settimeout(0.05)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        conn.settimeout(None)
        with conn, conn.makefile("rb") as reader:
            for line in reader:
                request = json.loads(line)
                with self._lock:
                    self.requests.append((number, request))
                try:
                    response = {"id": request["id"], "ok": self.handler(request)}
                except RunnerError as e:
                    response = {"id": request["id"], "error": {"kind": e.kind, "message": e.message}}
                except CloseConnection:
                    return
                conn.sendall(json.dumps(response).encode() + b"\n")

    def ops(self) -> list[str]:
        with self._lock:
            return [request["op"] for _, request in self.requests]

    def last(self, op: str) -> dict[str, Any]:
        with self._lock:
            return [request for _, request in self.requests if request["op"] == op][-1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._server.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class LostConnection(Exception):
    pass


def raise_lost(message: str) -> Any:
    raise LostConnection(message)


class FakeClock(td.Clock):
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class RunnerTestCase(unittest.TestCase):
    """Gives each test a FakeRunner, a client on it and a fake clock."""

    def setUp(self) -> None:
        self.runner = FakeRunner()
        self.addCleanup(self.runner.close)
        self.client = td.RpcClient(self.runner.path, on_lost=raise_lost)
        self.addCleanup(self.client.close)
        self.clock = FakeClock()
        patcher = mock.patch.object(td, "CLOCK", self.clock)
        patcher.start()
        self.addCleanup(patcher.stop)

    def make_driver(self, script: str = "", machines: list[str] | None = None, vlans: list[int] | None = None,
                    ) -> td.Driver:
        names = ["server"] if machines is None else machines
        return td.Driver(self.client, [td.MachineInfo(n) for n in names], vlans or [], script, SCRIPT_NAME,
                         Path("/out"))


def exec_script(script: str, symbols: dict[str, Any]) -> BaseException:
    """Run `script` compiled as SCRIPT_NAME and return the exception it raised."""
    td.register_script_source(SCRIPT_NAME, script)
    try:
        exec(compile(script, SCRIPT_NAME, "exec"), symbols)
    except BaseException as e:  # noqa: B902 - the test inspects whatever was raised
        return e
    raise AssertionError("the script did not raise")


def machine_error_deep_in_driver() -> None:
    """Raise a MachineError a few frames below the caller, as a Machine method does."""

    def inner() -> None:
        raise td.MachineError("command `false` failed (exit code 1)")

    inner()


# --- pure parts -----------------------------------------------------------------------------------------------------


class PythonizeNameTests(unittest.TestCase):
    def test_names(self) -> None:
        cases = {
            "server": "server",
            "my-client": "my_client",
            "a.b": "a_b",
            "1node": "_node",
            "_x9": "_x9",
            "9-9": "__9",
            "ünï": "_n_",
        }
        for name, expected in cases.items():
            with self.subTest(name=name):
                self.assertEqual(td.pythonize_name(name), expected)

    def test_session_uses_python_name_and_falls_back(self) -> None:
        session = td.Session({
            "protocol": "testrig-rpc/1",
            "machines": [{"name": "web-1", "python_name": "web_1"}, {"name": "db.x"}],
            "vlans": [1, 2],
            "test_script": "/s",
            "test_script_name": "t.py",
            "out_dir": "/o",
        })
        self.assertEqual([(m.name, m.python_name) for m in session.machines], [("web-1", "web_1"), ("db.x", "db_x")])
        self.assertEqual(session.vlans, [1, 2])
        self.assertEqual(session.test_script_name, "t.py")
        self.assertEqual(session.out_dir, Path("/o"))

    def test_session_rejects_other_protocol(self) -> None:
        with self.assertRaisesRegex(ValueError, "testrig-rpc/2"):
            td.Session({"protocol": "testrig-rpc/2", "machines": [], "test_script": "/s"})


class TracebackTests(unittest.TestCase):
    def test_machine_error_shows_the_calling_script_line_only(self) -> None:
        script = "x = 1\n\ndef helper():\n    fail_in_driver()\n\nhelper()\n"
        e = exec_script(script, {"fail_in_driver": machine_error_deep_in_driver})
        text = td.format_failure(e, SCRIPT_NAME)
        lines = text.splitlines()
        self.assertEqual(lines[0], "Traceback (most recent call last):")
        self.assertIn(f'  File "{SCRIPT_NAME}", line 6, in <module>', lines)
        self.assertIn("    helper()", lines)
        self.assertIn(f'  File "{SCRIPT_NAME}", line 4, in helper', lines)
        self.assertIn("    fail_in_driver()", lines)
        self.assertLess(lines.index(f'  File "{SCRIPT_NAME}", line 6, in <module>'),
                        lines.index(f'  File "{SCRIPT_NAME}", line 4, in helper'))
        self.assertTrue(lines[-1].endswith("MachineError: command `false` failed (exit code 1)"), lines[-1])
        self.assertNotIn("test_testrig_driver", text)
        self.assertNotIn("testrig_driver.py", text)
        self.assertEqual(td.failure_message(e, SCRIPT_NAME),
                         f"{SCRIPT_NAME}:4: " + lines[-1])

    def test_error_raised_in_the_script_itself(self) -> None:
        e = exec_script("a = 1\nb = {}\nb['missing']\n", {})
        text = td.format_failure(e, SCRIPT_NAME)
        self.assertIn(f'File "{SCRIPT_NAME}", line 3, in <module>', text)
        self.assertIn("    b['missing']", text)
        self.assertTrue(text.rstrip().endswith("KeyError: 'missing'"))

    def test_frames_of_other_files_between_script_frames_are_dropped(self) -> None:
        script = "def check(last):\n    raise ValueError('inside retry')\n\nretry(check, 5)\n"
        e = exec_script(script, {"retry": td.retry})
        frames = td.script_frames(e, SCRIPT_NAME)
        self.assertEqual([(f.lineno, f.name) for f in frames], [(4, "<module>"), (2, "check")])

    def test_syntax_error_gives_line_and_caret(self) -> None:
        script = "start_all()\nif True\n    pass\n"
        e = exec_script(script, {})
        self.assertIsInstance(e, SyntaxError)
        text = td.format_failure(e, SCRIPT_NAME)
        lines = text.splitlines()
        self.assertEqual(lines[0], f'  File "{SCRIPT_NAME}", line 2')
        self.assertEqual(lines[1].strip(), "if True")
        self.assertEqual(lines[2].strip().strip("^"), "")
        self.assertIn("^", lines[2])
        self.assertTrue(lines[-1].startswith("SyntaxError"))
        self.assertTrue(td.failure_message(e, SCRIPT_NAME).startswith(f"{SCRIPT_NAME}:2: SyntaxError"))

    def test_script_frames_need_no_real_file(self) -> None:
        e = exec_script("\n\nraise RuntimeError('third line')\n", {})
        self.assertIn("    raise RuntimeError('third line')", td.format_failure(e, SCRIPT_NAME))


class RetryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        patcher = mock.patch.object(td, "CLOCK", self.clock)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_returns_when_fn_succeeds(self) -> None:
        calls: list[bool] = []

        def fn(last: bool) -> bool:
            calls.append(last)
            return len(calls) == 3

        td.retry(fn, timeout_seconds=10)
        self.assertEqual(calls, [False, False, False])
        self.assertEqual(self.clock.sleeps, [1, 1])

    def test_once_a_second_then_one_last_try_then_raises(self) -> None:
        calls: list[tuple[float, bool]] = []

        def fn(last: bool) -> bool:
            calls.append((self.clock.now, last))
            return False

        with self.assertRaises(td.RequestedAssertionFailed) as caught:
            td.retry(fn, timeout_seconds=5)
        self.assertEqual(calls, [(0, False), (1, False), (2, False), (3, False), (4, False), (5, True)])
        self.assertEqual(str(caught.exception), "action timed out after 5.00 seconds (timeout=5)")

    def test_last_try_may_succeed(self) -> None:
        td.retry(lambda last: last, timeout_seconds=3)

    def test_zero_timeout_is_only_the_last_try(self) -> None:
        calls: list[bool] = []

        def fn(last: bool) -> bool:
            calls.append(last)
            return True

        td.retry(fn, timeout_seconds=0)
        self.assertEqual(calls, [True])

    def test_default_timeout_is_900(self) -> None:
        calls: list[bool] = []

        def fn(last: bool) -> bool:
            calls.append(last)
            return False

        with self.assertRaises(td.RequestedAssertionFailed):
            td.retry(fn)
        self.assertEqual(len(calls), 901)

    def test_is_a_test_failure(self) -> None:
        self.assertTrue(issubclass(td.RequestedAssertionFailed, Exception))


class DurationTests(RunnerTestCase):
    """Every duration the API takes: a timedelta (preferred), a bare int or float (seconds, with nixpkgs'
    deprecation warning), None where nixpkgs allows it; a bool or a str is a TypeError before anything is sent."""

    def test_coercion(self) -> None:
        self.assertEqual(td.as_timedelta(dt.timedelta(minutes=2)), dt.timedelta(seconds=120))
        self.assertEqual(td.as_timedelta(3), dt.timedelta(seconds=3))
        self.assertEqual(td.as_timedelta(0.25), dt.timedelta(milliseconds=250))
        self.assertEqual(td.as_seconds(dt.timedelta(minutes=15)), 900.0)
        for bad in (True, False, "5", None, [5]):
            with self.subTest(bad=bad), self.assertRaises(TypeError):
                td.as_timedelta(bad)  # type: ignore[arg-type]

    def duration_calls(self, m: td.Machine) -> list[tuple[str, Callable[[Any], Any], str, str, bool]]:
        """(method, call with a duration, op, argument the seconds travel in, None allowed)."""
        return [
            ("execute", lambda d: m.execute("x", timeout=d), "execute", "timeout", True),
            ("succeed", lambda d: m.succeed("x", timeout=d), "succeed", "timeout", True),
            ("fail", lambda d: m.fail("x", timeout=d), "fail", "timeout", True),
            ("wait_until_succeeds", lambda d: m.wait_until_succeeds("x", timeout=d), "wait_until_succeeds",
             "timeout", False),
            ("wait_until_fails", lambda d: m.wait_until_fails("x", d), "wait_until_fails", "timeout", False),
            ("wait_for_unit", lambda d: m.wait_for_unit("u", timeout=d), "wait_for_unit", "timeout", False),
            ("wait_for_file", lambda d: m.wait_for_file("/f", d), "wait_for_file", "timeout", False),
            ("wait_for_open_port", lambda d: m.wait_for_open_port(1, timeout=d), "wait_for_open_port", "timeout",
             False),
            ("wait_for_closed_port", lambda d: m.wait_for_closed_port(1, "h", d), "wait_for_closed_port",
             "timeout", False),
            ("wait_for_open_unix_socket", lambda d: m.wait_for_open_unix_socket("/s", timeout=d),
             "wait_for_open_unix_socket", "timeout", False),
            ("wait_for_console_text", lambda d: m.wait_for_console_text("x", timeout=d), "wait_for_console_text",
             "timeout", True),
            ("sleep", lambda d: m.sleep(d), "sleep", "secs", False),
        ]

    def test_every_method_takes_a_timedelta_without_warning(self) -> None:
        m = self.make_driver().machines[0]
        for name, call, op, arg, _ in self.duration_calls(m):
            with self.subTest(name), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                call(dt.timedelta(minutes=1, milliseconds=500))
                self.assertEqual(self.runner.last(op)["args"][arg], 60.5)
                self.assertEqual([str(w.message) for w in caught], [])

    def test_bare_numbers_are_seconds_with_nixpkgs_deprecation_warning(self) -> None:
        m = self.make_driver().machines[0]
        for name, call, op, arg, _ in self.duration_calls(m):
            for number in (7, 2.5):
                with self.subTest(name, number=number), warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    call(number)
                    self.assertEqual(self.runner.last(op)["args"][arg], number)
                    self.assertEqual(
                        [str(w.message) for w in caught],
                        [f"{name}(): passing a bare int/float as a duration is deprecated. "
                         "Use datetime.timedelta instead."])

    def test_bool_and_str_are_type_errors_and_nothing_is_sent(self) -> None:
        m = self.make_driver().machines[0]
        for name, call, op, _, none_allowed in self.duration_calls(m):
            bad_values: list[Any] = [True, "5"] + ([] if none_allowed else [None])
            for bad in bad_values:
                with self.subTest(name, bad=bad):
                    sent = len(self.runner.requests)
                    with self.assertRaises(TypeError):
                        call(bad)
                    self.assertEqual(len(self.runner.requests), sent)

    def test_none_means_the_runners_default_where_nixpkgs_allows_it(self) -> None:
        m = self.make_driver().machines[0]
        for name, call, op, arg, none_allowed in self.duration_calls(m):
            if none_allowed:
                with self.subTest(name):
                    call(None)
                    self.assertIsNone(self.runner.last(op)["args"][arg])

    def test_defaults_are_fifteen_minutes(self) -> None:
        m = self.make_driver().machines[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m.execute("x")
            m.wait_for_unit("u")
            m.wait_until_succeeds("x")
            m.wait_for_open_port(22)
        self.assertEqual(caught, [])
        for op in ("execute", "wait_for_unit", "wait_until_succeeds", "wait_for_open_port"):
            self.assertEqual(self.runner.last(op)["args"]["timeout"], 900.0)

    def test_send_key_delay_is_a_duration(self) -> None:
        m = self.make_driver().machines[0]
        m.send_key("a", delay=dt.timedelta(milliseconds=30))
        m.send_key("b", delay=None)
        self.assertEqual(self.clock.sleeps, [0.03])
        with self.assertRaises(TypeError):
            m.send_key("c", delay=True)

    def test_renamed_keywords_still_work_with_a_warning(self) -> None:
        m = self.make_driver().machines[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m.sleep(secs=3)
        self.assertEqual(self.runner.last("sleep")["args"]["secs"], 3)
        self.assertIn("sleep(): The 'secs' argument is deprecated. Use 'duration' instead.",
                      [str(w.message) for w in caught])
        with self.assertRaises(TypeError):
            m.sleep(dt.timedelta(seconds=1), secs=1)
        with self.assertRaises(TypeError):
            m.sleep()

    def test_warning_points_at_the_script_line(self) -> None:
        driver = self.make_driver()
        script = "machine.wait_for_file('/f', 5)\n"
        td.register_script_source(SCRIPT_NAME, script)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(compile(script, SCRIPT_NAME, "exec"), driver.test_symbols())
        self.assertEqual([(w.filename, w.lineno) for w in caught], [(SCRIPT_NAME, 1)])

    def test_retry_timeout_and_its_old_name(self) -> None:
        calls: list[bool] = []
        td.retry(lambda last: calls.append(last) or len(calls) == 2, timeout=dt.timedelta(seconds=10))
        self.assertEqual(calls, [False, False])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with self.assertRaises(td.RequestedAssertionFailed):
                td.retry(lambda last: False, timeout_seconds=2)
        self.assertIn("retry(): The 'timeout_seconds' argument is deprecated. Use 'timeout' instead.",
                      [str(w.message) for w in caught])
        with self.assertRaises(TypeError):
            td.retry(lambda last: True, timeout=dt.timedelta(seconds=1), timeout_seconds=1)
        with self.assertRaises(TypeError):
            td.retry(lambda last: True, timeout=True)

    def test_polling_condition_interval_and_its_old_name(self) -> None:
        driver = self.make_driver()
        poll = driver.polling_condition(lambda: True, interval=dt.timedelta(seconds=5))
        self.assertEqual(poll.condition.interval, dt.timedelta(seconds=5))
        self.assertEqual(driver.polling_condition(lambda: True).condition.interval, dt.timedelta(seconds=2))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old = driver.polling_condition(seconds_interval=3)(lambda: True)
        self.assertEqual(old.condition.interval, dt.timedelta(seconds=3))
        self.assertEqual([str(w.message) for w in caught],
                         ["polling_condition(): The 'seconds_interval' argument is deprecated. Use 'interval' "
                          "instead."])
        with self.assertRaises(TypeError):
            driver.polling_condition(lambda: True, interval=dt.timedelta(seconds=1), seconds_interval=1)
        with self.assertRaises(TypeError):
            driver.polling_condition(lambda: True, interval=False)

    def test_poll_wait_and_tty_wait_take_durations(self) -> None:
        driver = self.make_driver()
        poll = driver.polling_condition(lambda: True)
        poll.wait(dt.timedelta(seconds=3))
        with self.assertRaises(TypeError):
            poll.wait(True)
        m = driver.machines[0]
        with self.assertRaises(TypeError):
            m.wait_until_tty_matches("1", "x", timeout="5")


class MachineAttributeTests(RunnerTestCase):
    """nixpkgs' Machine attributes: fixed ones from the session, changing ones read from the runner."""

    def make_machine(self) -> td.Machine:
        info = td.MachineInfo.from_session({
            "name": "server", "python_name": "server", "start_command": "/nix/store/x-vm/bin/run-server-vm",
            "state_dir": "/run/t/vm-state-server", "shared_dir": "/run/t/shared-xchg", "keep_machine_state": True})
        return td.Machine(info.name, self.client, td.Logger(self.client), Path("/out"), info=info)

    def test_fixed_attributes(self) -> None:
        m = self.make_machine()
        self.assertEqual(m.name, "server")
        self.assertEqual(m.start_command, "/nix/store/x-vm/bin/run-server-vm")
        self.assertEqual(m.start_command.machine_name, "server")
        self.assertEqual(td.StartCommand("qemu-kvm -m 512").machine_name, "machine")
        self.assertEqual(m.state_dir, Path("/run/t/vm-state-server"))
        self.assertEqual(m.shared_dir, Path("/run/t/shared-xchg"))
        self.assertEqual(m.out_dir, Path("/out"))
        self.assertEqual((m.monitor_path, m.shell_path, m.qmp_path),
                         (Path("/run/t/vm-state-server/monitor"), Path("/run/t/vm-state-server/shell"),
                          Path("/run/t/vm-state-server/qmp")))
        self.assertIs(m.keep_machine_state, True)
        self.assertIs(m.keep_vm_state, True)
        self.assertEqual(self.runner.requests, [])

    def test_changing_attributes_ask_the_runner(self) -> None:
        m = self.make_machine()
        status = {"pid": None, "booted": False, "connected": False, "exit_code": None}
        self.runner.handler = lambda request: dict(status) if request["op"] == "status" else None
        self.assertEqual((m.pid, m.booted, m.connected, m.process), (None, False, False, None))
        status.update(pid=4242, booted=True, connected=True)
        self.assertEqual((m.pid, m.booted, m.connected), (4242, True, True))
        process = m.process
        assert process is not None
        self.assertEqual((process.pid, process.poll(), process.returncode), (4242, None, None))
        status.update(booted=False, connected=False, exit_code=-9)
        self.assertEqual((process.poll(), m.booted), (-9, False))
        self.assertEqual({r["op"] for _, r in self.runner.requests}, {"status"})
        self.assertEqual({r["machine"] for _, r in self.runner.requests}, {"server"})


class OutputDecodingTests(unittest.TestCase):
    def test_surrogateescape_round_trip(self) -> None:
        raw = b"\xff\xfe\x00bin\xc3\xa9\n\x80tail"
        text = td.decode_output(b64(raw))
        self.assertEqual(text.encode("utf-8", "surrogateescape"), raw)
        self.assertIn("é", text)

    def test_empty(self) -> None:
        self.assertEqual(td.decode_output(""), "")


# --- the client against a fake runner -------------------------------------------------------------------------------


class ProtocolTests(RunnerTestCase):
    def test_request_shape_and_ids(self) -> None:
        driver = self.make_driver()
        server = driver.machines[0]
        driver.start_all()
        server.wait_for_unit("nginx.service", timeout=30)
        requests = [request for _, request in self.runner.requests]
        self.assertEqual(requests[0], {"id": 1, "op": "start_all", "args": {}})
        self.assertEqual(requests[1], {"id": 2, "op": "wait_for_unit", "machine": "server",
                                       "args": {"unit": "nginx.service", "user": None, "timeout": 30}})

    def test_error_kinds(self) -> None:
        def handler(request: dict[str, Any]) -> Any:
            kind = request["args"]["command"]
            raise RunnerError(kind, f"server: `x` {kind}")

        self.runner.handler = handler
        server = self.make_driver().machines[0]
        for kind, exception in [("failure", td.MachineError), ("timeout", td.MachineError),
                                ("bad_request", RuntimeError)]:
            with self.subTest(kind=kind), self.assertRaises(exception) as caught:
                server.wait_until_succeeds(kind)
            self.assertIn(f"server: `x` {kind}", str(caught.exception))
        self.assertTrue(issubclass(td.MachineError, Exception))

    def test_execute_results(self) -> None:
        self.runner.handler = lambda r: {"status": 3, "output_b64": b64(b"out\n")} if r["op"] == "execute" else None
        server = self.make_driver().machines[0]
        self.assertEqual(server.execute("x"), (3, "out\n"))
        self.assertEqual(self.runner.last("execute")["args"],
                         {"command": "x", "timeout": 900, "check_output": True, "check_return": True})
        self.assertEqual(server.execute("poweroff", check_return=False), (-1, "out\n"))
        self.assertEqual(server.execute("x", check_output=False, timeout=None), (-2, ""))
        self.assertEqual(self.runner.last("execute")["args"],
                         {"command": "x", "timeout": None, "check_output": False, "check_return": True})

    def test_outputs_keep_exact_bytes(self) -> None:
        raw = b"\x00\xff binary \xe2\x82\xac\n"
        self.runner.handler = lambda r: {"status": 0, "output_b64": b64(raw)}
        server = self.make_driver().machines[0]
        self.assertEqual(server.succeed("a", "b").encode("utf-8", "surrogateescape"), raw)
        self.assertEqual(self.runner.last("succeed")["args"], {"commands": ["a", "b"], "timeout": None})
        self.assertEqual(server.systemctl("status x", user="alice")[1].encode("utf-8", "surrogateescape"), raw)

    def test_machine_methods_send_their_ops(self) -> None:
        driver = self.make_driver()
        m = driver.machines[0]
        cwd_file = os.path.join(os.getcwd(), "rel.txt")
        calls: list[tuple[Callable[[], Any], str, dict[str, Any]]] = [
            (lambda: m.start(), "start", {"allow_reboot": False}),
            (lambda: m.start(allow_reboot=True), "start", {"allow_reboot": True}),
            (lambda: m.shutdown(), "shutdown", {}),
            (lambda: m.crash(), "crash", {}),
            (lambda: m.reboot(), "reboot", {}),
            (lambda: m.release(), "release", {}),
            (lambda: m.wait_for_shutdown(), "wait_for_shutdown", {}),
            (lambda: m.fail("false", timeout=5), "fail", {"commands": ["false"], "timeout": 5}),
            (lambda: m.wait_until_fails("x"), "wait_until_fails", {"command": "x", "timeout": 900}),
            (lambda: m.get_unit_info("u"), "get_unit_info", {"unit": "u", "user": None}),
            (lambda: m.get_unit_property("u", "ActiveState"), "get_unit_property",
             {"unit": "u", "property": "ActiveState", "user": None}),
            (lambda: m.require_unit_state("u"), "require_unit_state", {"unit": "u", "state": "active"}),
            (lambda: m.require_unit_state("u", "inactive"), "require_unit_state", {"unit": "u", "state": "inactive"}),
            (lambda: m.start_job("u"), "systemctl", {"q": "start u", "user": None}),
            (lambda: m.stop_job("u", "bob"), "systemctl", {"q": "stop u", "user": "bob"}),
            (lambda: m.wait_for_file("/f"), "wait_for_file", {"path": "/f", "timeout": 900}),
            (lambda: m.wait_for_open_port(80), "wait_for_open_port", {"port": 80, "addr": "localhost", "timeout": 900}),
            (lambda: m.wait_for_closed_port(80, "10.0.0.1", 3), "wait_for_closed_port",
             {"port": 80, "addr": "10.0.0.1", "timeout": 3}),
            (lambda: m.wait_for_open_unix_socket("/s", True), "wait_for_open_unix_socket",
             {"path": "/s", "is_datagram": True, "timeout": 900}),
            (lambda: m.sleep(2), "sleep", {"secs": 2}),
            (lambda: m.send_monitor_command("info status"), "send_monitor_command", {"command": "info status"}),
            (lambda: m.wait_for_console_text("login:"), "wait_for_console_text", {"regex": "login:", "timeout": None}),
            (lambda: m.get_console_log(), "get_console_log", {}),
            (lambda: m.screenshot("shot"), "screenshot", {"name": "shot"}),
            (lambda: m.copy_from_host("rel.txt", "/etc/x"), "copy_from_host", {"source": cwd_file, "target": "/etc/x"}),
            (lambda: m.copy_from_machine("/etc/x"), "copy_from_machine", {"source": "/etc/x", "target_dir": ""}),
            (lambda: m.copy_from_vm("/etc/x", "d"), "copy_from_machine", {"source": "/etc/x", "target_dir": "d"}),
            (lambda: m.forward_port(), "forward_port", {"host_port": 8080, "guest_port": 80}),
            (lambda: m.block(), "block", {}),
            (lambda: m.unblock(), "unblock", {}),
            (lambda: m.send_key("ctrl-alt-delete"), "send_key", {"key": "ctrl-alt-delete"}),
            (lambda: m.send_chars("hello\n"), "send_chars", {"chars": "hello\n"}),
            (lambda: m.send_console("\n"), "send_console", {"chars": "\n"}),
            (lambda: m.connect(), "execute",
             {"command": "true", "timeout": None, "check_output": True, "check_return": True}),
        ]
        for call, op, args in calls:
            with self.subTest(op=op, args=args):
                call()
                request = [r for _, r in self.runner.requests][-1]
                self.assertEqual((request["op"], request["machine"], request["args"]), (op, "server", args))
        self.assertIs(m.is_up(), True)
        self.assertEqual(m.get_unit_info("u"), {"ActiveState": "active"})
        self.assertEqual(m.screenshot("x"), "/out/shot.png")

    def test_unsupported_methods_name_themselves(self) -> None:
        m = self.make_driver().machines[0]
        for method in ["wait_for_x", "wait_for_window", "get_window_names"]:
            with self.subTest(method=method), self.assertRaises(NotImplementedError) as caught:
                getattr(m, method)("arg")
            self.assertIn(f"Machine.{method}()", str(caught.exception))
            self.assertIn("not supported by testrig", str(caught.exception))
        self.assertEqual(self.runner.requests, [])

    def test_tty_text_comes_from_the_guest_vcs(self) -> None:
        self.runner.handler = lambda r: {"status": 0, "output_b64": b64(b"login: ")}
        m = self.make_driver().machines[0]
        self.assertEqual(m.get_tty_text("1"), "login: ")
        request = [r for _, r in self.runner.requests][-1]
        self.assertEqual(request["op"], "execute")
        self.assertIn("/dev/vcs1", request["args"]["command"])
        m.wait_until_tty_matches("1", "log[i]n:", timeout=5)

    def test_shell_interact_runs_each_line_and_shows_failures(self) -> None:
        def handler(request: dict[str, Any]) -> Any:
            if request["op"] != "execute":
                return None
            if request["args"]["command"] == "false":
                return {"status": 1, "output_b64": ""}
            return {"status": 0, "output_b64": b64(b"hi")}

        self.runner.handler = handler
        m = self.make_driver().machines[0]
        lines = iter(["echo hi", "   ", "false"])

        def fake_input(prompt: str) -> str:
            try:
                return next(lines)
            except StopIteration:
                raise EOFError from None

        with mock.patch("builtins.input", fake_input), mock.patch.object(sys, "stdout", new=io.StringIO()) as out:
            m.shell_interact()
        commands = [r["args"]["command"] for _, r in self.runner.requests if r["op"] == "execute"]
        self.assertEqual(commands, ["echo hi", "false"])
        self.assertIn("hi\n", out.getvalue())
        self.assertIn("[exit status 1]", out.getvalue())

    def test_each_thread_has_its_own_connection(self) -> None:
        release = threading.Event()

        def handler(request: dict[str, Any]) -> Any:
            if request["op"] == "wait_for_unit":
                release.wait(10)
            return DEFAULT_RESULTS.get(request["op"])

        self.runner.handler = handler
        m = self.make_driver().machines[0]
        m.is_up()  # main thread's connection
        waiter = threading.Thread(target=m.wait_for_unit, args=("slow",))
        waiter.start()
        other: list[bool] = []
        prober = threading.Thread(target=lambda: other.append(m.is_up()))
        prober.start()
        prober.join(10)
        self.assertEqual(other, [True], "a thread blocked in a wait must not block another")
        release.set()
        waiter.join(10)
        self.assertEqual(self.runner.connections, 3)
        self.assertEqual(len({number for number, _ in self.runner.requests}), 3)

    def test_lost_connection_calls_on_lost(self) -> None:
        def handler(request: dict[str, Any]) -> Any:
            raise CloseConnection()

        self.runner.handler = handler
        with self.assertRaisesRegex(LostConnection, "closed the connection"):
            self.make_driver().machines[0].succeed("true")

    def test_interrupted_request_drops_the_connection(self) -> None:
        client = td.RpcClient(self.runner.path, on_lost=raise_lost)
        self.addCleanup(client.close)
        client.call("log", {"message": "first"})
        with mock.patch.object(td._Connection, "exchange", side_effect=KeyboardInterrupt):
            with self.assertRaises(KeyboardInterrupt):
                client.call("log", {"message": "interrupted"})
        client.call("log", {"message": "after"})
        self.assertEqual(self.runner.connections, 2)
        self.assertEqual(self.runner.last("log"), {"id": 1, "op": "log", "args": {"message": "after"}})

    def test_missing_socket_calls_on_lost(self) -> None:
        client = td.RpcClient(os.path.join(self.runner.dir, "nothing.sock"), on_lost=raise_lost)
        with self.assertRaisesRegex(LostConnection, "cannot connect"):
            client.connect()


class MachineApiTests(RunnerTestCase):
    """wait_for_qmp_event, create_machine and shell_interact(address): nixpkgs' semantics over the runner's ops."""

    def events_handler(self, events: list[dict[str, Any]], seconds_per_call: float = 0.0) -> None:
        """The runner's next_qmp_event: hands out `events` in order, then times out; each call takes
        `seconds_per_call` of the fake clock."""
        queue = list(events)

        def handler(request: dict[str, Any]) -> Any:
            if request["op"] != "next_qmp_event":
                return DEFAULT_RESULTS.get(request["op"])
            self.clock.now += seconds_per_call
            if not queue:
                raise RunnerError("timeout", "server: no QMP event within 1 seconds")
            return queue.pop(0)

        self.runner.handler = handler

    def test_wait_for_qmp_event_consumes_events_until_the_filter_accepts_one(self) -> None:
        events = [{"event": "RTC_CHANGE", "data": {}}, {"event": "STOP", "data": {}},
                  {"event": "SHUTDOWN", "data": {"guest": True}}, {"event": "STOP", "data": {}}]
        self.events_handler(events)
        m = self.make_driver().machines[0]
        seen: list[str] = []

        def is_shutdown(event: dict[str, Any]) -> bool:
            seen.append(event["event"])
            return event["event"] == "SHUTDOWN"

        got = m.wait_for_qmp_event(is_shutdown, timeout=dt.timedelta(seconds=30))
        self.assertEqual(got, {"event": "SHUTDOWN", "data": {"guest": True}})
        self.assertEqual(seen, ["RTC_CHANGE", "STOP", "SHUTDOWN"])
        # The next wait starts after the consumed ones.
        self.assertEqual(m.wait_for_qmp_event(lambda e: True)["event"], "STOP")
        requests = [r for _, r in self.runner.requests if r["op"] == "next_qmp_event"]
        self.assertEqual([r["machine"] for r in requests], ["server"] * 4)
        self.assertEqual(requests[0]["args"], {"timeout": 30.0})
        self.assertEqual(requests[-1]["args"], {"timeout": 600.0}, "nixpkgs' default is 10 minutes")

    def test_wait_for_qmp_event_has_one_deadline_over_all_events(self) -> None:
        # Each event takes 4 s to come; none is accepted; the wait ends once 10 s are over, asking for less each time.
        self.events_handler([{"event": "STOP"}] * 10, seconds_per_call=4.0)
        m = self.make_driver().machines[0]
        with self.assertRaises(td.QmpEventTimeout) as caught:
            m.wait_for_qmp_event(lambda e: False, timeout=dt.timedelta(seconds=10))
        self.assertIsInstance(caught.exception, TimeoutError)
        self.assertIsInstance(caught.exception, td.MachineError)
        self.assertIn("within 10 seconds", str(caught.exception))
        timeouts = [r["args"]["timeout"] for _, r in self.runner.requests if r["op"] == "next_qmp_event"]
        self.assertEqual(timeouts, [10.0, 6.0, 2.0])

    def test_wait_for_qmp_event_timeout_and_failure(self) -> None:
        self.events_handler([])
        m = self.make_driver().machines[0]
        with self.assertRaises(TimeoutError):
            m.wait_for_qmp_event(lambda e: True, timeout=dt.timedelta(seconds=1))

        def failing(request: dict[str, Any]) -> Any:
            raise RunnerError("failure", "server: QMP API is not ready yet, is the VM ready?")

        self.runner.handler = failing
        with self.assertRaises(td.MachineError) as caught:
            m.wait_for_qmp_event(lambda e: True)
        self.assertNotIsInstance(caught.exception, TimeoutError)
        self.assertIn("QMP API is not ready yet", str(caught.exception))

    def test_wait_for_qmp_event_durations_and_no_polling_conditions(self) -> None:
        self.events_handler([{"event": "A"}, {"event": "B"}])
        driver = self.make_driver()
        m = driver.machines[0]
        calls: list[int] = []

        @driver.polling_condition(interval=dt.timedelta(0))
        def never_checked() -> bool:
            calls.append(1)
            return False

        with never_checked:
            with self.assertWarnsRegex(Warning, "bare int/float"):
                m.wait_for_qmp_event(lambda e: True, timeout=5)
            with self.assertRaises(TypeError):
                m.wait_for_qmp_event(lambda e: True, timeout=True)
            with self.assertRaises(TypeError):
                m.wait_for_qmp_event(lambda e: True, timeout="5")
        self.assertEqual(calls, [], "nixpkgs' wait_for_qmp_event runs no polling conditions")

    def test_create_machine_sends_the_command_and_returns_a_machine_of_the_runners_name(self) -> None:
        def handler(request: dict[str, Any]) -> Any:
            if request["op"] == "create_machine":
                name = request["args"]["name"] or "target"
                return {"name": name, "python_name": name, "start_command": request["args"]["start_command"],
                        "state_dir": f"/run/t/vm-state-{name}", "shared_dir": "/run/t/shared-xchg",
                        "keep_machine_state": request["args"]["keep_machine_state"]}
            return DEFAULT_RESULTS.get(request["op"])

        self.runner.handler = handler
        driver = self.make_driver()
        made = driver.create_machine("/vms/bin/run-target-vm")
        self.assertEqual(self.runner.last("create_machine")["args"],
                         {"start_command": "/vms/bin/run-target-vm", "name": None, "keep_machine_state": False})
        self.assertIsInstance(made, td.Machine)
        self.assertEqual(made.name, "target")
        self.assertEqual((made.state_dir, made.start_command.machine_name), (Path("/run/t/vm-state-target"), "target"))
        self.assertNotIn(made, driver.machines, "nixpkgs does not add it to machines")
        made.succeed("true")
        self.assertEqual(self.runner.last("succeed")["machine"], "target")

        named = driver.create_machine("qemu-kvm -m 512", name="other", keep_machine_state=True)
        self.assertEqual(named.name, "other")
        self.assertIs(named.keep_machine_state, True)
        self.assertEqual(self.runner.last("create_machine")["args"]["keep_machine_state"], True)
        with self.assertWarnsRegex(Warning, "keep_vm_state"):
            driver.create_machine("run-x-vm", name="x", keep_vm_state=True)
        self.assertEqual(self.runner.last("create_machine")["args"]["keep_machine_state"], True)
        with self.assertRaises(TypeError):
            driver.create_machine("run-x-vm", keep_machine_state=True, keep_vm_state=True)
        with self.assertRaises(TypeError):
            driver.create_machine(["run-x-vm"])  # type: ignore[arg-type]

    def test_create_machine_takes_the_old_dictionary(self) -> None:
        self.runner.handler = lambda r: {"name": r["args"]["name"] or "machine"}
        driver = self.make_driver()
        with self.assertWarnsRegex(Warning, "dictionary"):
            made = driver.create_machine({"startCommand": "run-y-vm", "name": "y", "keep_vm_state": True})
        self.assertEqual(made.name, "y")
        self.assertEqual(self.runner.last("create_machine")["args"],
                         {"start_command": "run-y-vm", "name": "y", "keep_machine_state": True})
        for bad in [{"name": "y"}, {"startCommand": "run-y-vm", "qemuFlags": "-m 1"}, {"startCommand": 3}]:
            with self.subTest(bad=bad), self.assertRaises(TypeError):
                driver.create_machine(bad)
        with self.assertRaises(TypeError):
            driver.create_machine({"startCommand": "run-y-vm"}, name="y")

    def test_create_machine_errors_are_the_runners(self) -> None:
        def handler(request: dict[str, Any]) -> Any:
            raise RunnerError("bad_request", "create_machine: there is a machine named `server` already")

        self.runner.handler = handler
        with self.assertRaisesRegex(RuntimeError, "there is a machine named `server` already"):
            self.make_driver().create_machine("run-server-vm")

    def test_shell_interact_with_an_address_is_one_request_and_ctrl_c_ends_it_quietly(self) -> None:
        driver = self.make_driver()
        m = driver.machines[0]
        calls: list[int] = []

        @driver.polling_condition(interval=dt.timedelta(0))
        def never_checked() -> bool:
            calls.append(1)
            return False

        with never_checked:
            m.shell_interact("unix-listen:/tmp/sh.sock")
        self.assertEqual(self.runner.last("shell_interact")["args"], {"address": "unix-listen:/tmp/sh.sock"})
        self.assertEqual(calls, [])
        with mock.patch.object(td._Connection, "exchange", side_effect=KeyboardInterrupt):
            m.shell_interact("tcp-listen:4444,reuseaddr")  # returns, as nixpkgs' does on Ctrl-C
class OcrTests(RunnerTestCase):
    """get_screen_text, get_screen_text_variants and wait_for_text: one `get_screen_text` op per reading."""

    def screens(self, raw: list[str], variants: list[list[str]]) -> None:
        """Answer the raw readings and the variant readings in turn, one per request."""
        raw_left, variants_left = list(raw), list(variants)

        def handler(request: dict[str, Any]) -> Any:
            if request["op"] != "get_screen_text":
                return None
            if request["args"]["variants"]:
                return variants_left.pop(0)
            return [raw_left.pop(0)]

        self.runner.handler = handler

    def test_text_and_variants_are_one_op(self) -> None:
        self.screens(["login:"], [["login:", "log1n:", "Iogin:"]])
        m = self.make_driver().machines[0]
        self.assertEqual(m.get_screen_text(), "login:")
        self.assertEqual(m.get_screen_text_variants(), ["login:", "log1n:", "Iogin:"])
        requests = [r for _, r in self.runner.requests]
        self.assertEqual([(r["op"], r["machine"], r["args"]) for r in requests],
                         [("get_screen_text", "server", {"variants": False}),
                          ("get_screen_text", "server", {"variants": True})])

    def test_wait_for_text_stops_at_a_raw_match(self) -> None:
        self.screens(["booting", "machine login:"], [["booting", "booting", "booting"]])
        m = self.make_driver().machines[0]
        m.wait_for_text("login:", timeout=10)
        self.assertEqual([r["args"]["variants"] for _, r in self.runner.requests if r["op"] == "get_screen_text"],
                         [False, True, False])
        self.assertEqual(self.clock.sleeps, [1])
        self.assertIn("nested_begin", self.runner.ops())
        self.assertEqual(self.runner.last("nested_begin")["args"]["message"],
                         "server: waiting for login: to appear on screen")

    def test_wait_for_text_matches_a_variant(self) -> None:
        self.screens(["Iog1n"], [["Iog1n", "login", "l0gin"]])
        m = self.make_driver().machines[0]
        m.wait_for_text(r"^log.n$", timeout=10)
        self.assertEqual(self.clock.sleeps, [])

    def test_wait_for_text_times_out_with_the_last_texts(self) -> None:
        self.screens(["nothing"] * 4, [["nothing", "n0thing", "nothinq"]] * 4)
        m = self.make_driver().machines[0]
        with self.assertRaises(td.RequestedAssertionFailed) as caught:
            m.wait_for_text("login:", timeout=3)
        self.assertEqual(str(caught.exception), "action timed out after 3.00 seconds (timeout=3)")
        self.assertEqual(self.clock.sleeps, [1, 1, 1])
        logged = [r["args"]["message"] for _, r in self.runner.requests if r["op"] == "log"]
        self.assertTrue(any("Last OCR attempt failed. Text was: ['nothing', 'n0thing', 'nothinq']" in line
                            for line in logged), logged)

    def test_wait_for_text_takes_a_timedelta(self) -> None:
        import datetime

        self.screens(["x"] * 3, [["x", "x", "x"]] * 3)
        m = self.make_driver().machines[0]
        with self.assertRaises(td.RequestedAssertionFailed) as caught:
            m.wait_for_text("login:", timeout=datetime.timedelta(seconds=2))
        self.assertEqual(self.clock.sleeps, [1, 1])
        self.assertIn("(timeout=2)", str(caught.exception))

    def test_ocr_refusal_is_a_test_failure_not_retried(self) -> None:
        def handler(request: dict[str, Any]) -> Any:
            if request["op"] == "get_screen_text":
                raise RunnerError("failure", "OCR requested but enableOCR is false (set `enableOCR = true;` "
                                             "in the test)")
            return None

        self.runner.handler = handler
        m = self.make_driver().machines[0]
        with self.assertRaises(td.MachineError) as caught:
            m.wait_for_text("login:", timeout=30)
        self.assertIn("OCR requested but enableOCR is false", str(caught.exception))
        self.assertEqual(self.runner.ops().count("get_screen_text"), 1)
        self.assertEqual(self.clock.sleeps, [])


class GlobalsTests(RunnerTestCase):
    def test_one_machine_is_also_machine(self) -> None:
        symbols = self.make_driver(machines=["web-1"], vlans=[1]).test_symbols()
        self.assertIs(symbols["web_1"], symbols["machine"])
        self.assertEqual(repr(symbols["machine"]), "<Machine 'web-1'>")
        self.assertEqual(symbols["machine"].name, "web-1")
        self.assertEqual([v.nr for v in symbols["vlans"]], [1])
        self.assertIs(symbols["vlan1"], symbols["vlans"][0])

    def test_several_machines_sorted_and_no_machine_global(self) -> None:
        driver = self.make_driver(machines=["server", "client"])
        symbols = driver.test_symbols()
        self.assertNotIn("machine", symbols)
        self.assertEqual([m.name for m in symbols["machines"]], ["client", "server"])
        self.assertEqual([m.name for m in symbols["machines_qemu"]], ["server", "client"])
        self.assertEqual(symbols["machines_nspawn"], [])
        self.assertIs(symbols["driver"].machines[0], symbols["client"])
        for name in ["start_all", "join_all", "test_script", "run_tests", "subtest", "retry", "polling_condition",
                     "serial_stdout_on", "serial_stdout_off", "log", "os", "t", "debug", "driver", "vlans"]:
            self.assertIn(name, symbols)

    def test_t_assertions_are_test_failures(self) -> None:
        t = self.make_driver().test_symbols()["t"]
        with self.assertRaises(td.RequestedAssertionFailed):
            t.assertEqual(1, 2)
        t.assertIn("a", "abc")

    def test_debug_breakpoint_logs_a_warning(self) -> None:
        self.make_driver().test_symbols()["debug"].breakpoint()
        self.assertEqual(self.runner.ops(), ["log"])
        self.assertIn("warning", self.runner.last("log")["args"]["message"])

    def test_log_and_nested(self) -> None:
        driver = self.make_driver()
        log = driver.test_symbols()["log"]
        with log.nested("outer"):
            log.info("i")
            driver.machines[0].log("m")
            with driver.machines[0].nested("inner"):
                pass
        requests = [(r["op"], r["args"]) for _, r in self.runner.requests]
        self.assertEqual(requests, [
            ("nested_begin", {"message": "outer"}),
            ("log", {"message": "i"}),
            ("log", {"message": "server: m"}),
            ("nested_begin", {"message": "server: inner"}),
            ("nested_end", {}),
            ("nested_end", {}),
        ])

    def test_serial_stdout_switches_only_log(self) -> None:
        symbols = self.make_driver().test_symbols()
        symbols["serial_stdout_off"]()
        symbols["serial_stdout_on"]()
        self.assertEqual(self.runner.ops(), ["log", "log"])


class SubtestTests(RunnerTestCase):
    def test_order_and_result(self) -> None:
        driver = self.make_driver("with subtest('a'):\n    machine.succeed('true')\n"
                                  "    with subtest('b'):\n        pass\n")
        self.assertEqual(driver.run(), 0)
        requests = [(r["op"], r["args"]) for _, r in self.runner.requests]
        self.assertEqual(requests, [
            ("subtest_begin", {"name": "a"}),
            ("succeed", {"commands": ["true"], "timeout": None}),
            ("subtest_begin", {"name": "b"}),
            ("subtest_end", {"name": "b", "ok": True, "message": None}),
            ("subtest_end", {"name": "a", "ok": True, "message": None}),
            ("result", {"ok": True}),
        ])

    def test_failure_is_reported_and_propagates(self) -> None:
        def handler(request: dict[str, Any]) -> Any:
            if request["op"] == "succeed":
                raise RunnerError("failure", "server: command `false` failed (exit code 1)")
            return None

        self.runner.handler = handler
        driver = self.make_driver("start_all()\nwith subtest('breaks'):\n    machine.succeed('false')\n"
                                  "machine.succeed('never reached')\n")
        with mock.patch.object(sys, "stderr", new=io.StringIO()) as stderr:
            self.assertEqual(driver.run(), 1)
        # The runner prints the traceback it was sent; Python prints nothing of its own.
        self.assertEqual(stderr.getvalue(), "")
        self.assertEqual(self.runner.ops(), ["start_all", "subtest_begin", "succeed", "subtest_end", "result"])
        end = self.runner.last("subtest_end")["args"]
        self.assertEqual((end["name"], end["ok"]), ("breaks", False))
        self.assertIn("command `false` failed", end["message"])
        result = self.runner.last("result")["args"]
        self.assertFalse(result["ok"])
        self.assertTrue(result["message"].startswith(f"{SCRIPT_NAME}:3: "), result["message"])
        self.assertIn(f'File "{SCRIPT_NAME}", line 3, in <module>', result["traceback"])
        self.assertIn("    machine.succeed('false')", result["traceback"])

    def test_system_exit_zero_is_success(self) -> None:
        self.assertEqual(self.make_driver("import sys\nsys.exit(0)\n").run(), 0)
        self.assertEqual(self.runner.last("result")["args"], {"ok": True})


class PollingConditionTests(RunnerTestCase):
    def test_failing_condition_fails_the_next_command_before_it_is_sent(self) -> None:
        driver = self.make_driver()
        server = driver.machines[0]

        @driver.polling_condition
        def server_healthy() -> bool:
            return False

        with server_healthy:
            with self.assertRaisesRegex(td.PollingConditionError, "Polling condition failed: server_healthy"):
                server.succeed("true")
        self.assertNotIn("succeed", self.runner.ops())
        server.succeed("true")  # inactive again
        self.assertIn("succeed", self.runner.ops())

    def test_checked_only_when_overdue(self) -> None:
        driver = self.make_driver()
        server = driver.machines[0]
        calls: list[float] = []

        @driver.polling_condition(seconds_interval=10)
        def cond() -> None:
            calls.append(self.clock.now)

        with cond:
            server.succeed("a")  # never called yet: due
            server.succeed("b")  # called at 0, due after 10
            self.clock.now = 5
            server.execute("c")
            self.clock.now = 10.5
            server.wait_until_succeeds("d")
        self.assertEqual(calls, [0, 10.5])

    def test_not_checked_before_lifecycle_ops(self) -> None:
        driver = self.make_driver()
        server = driver.machines[0]
        calls: list[int] = []

        @driver.polling_condition
        def cond() -> bool:
            calls.append(1)
            return False

        with cond:
            server.start()
            server.is_up()
            server.get_console_log()
            driver.start_all()
        self.assertEqual(calls, [])

    def test_result_semantics(self) -> None:
        driver = self.make_driver()
        server = driver.machines[0]

        def boom() -> bool:
            raise ValueError("x")

        for fun, ok in [(lambda: None, True), (lambda: True, True), (lambda: 0, False), (boom, False)]:
            with self.subTest(fun=fun):
                with driver.polling_condition(fun, description="d"):
                    if ok:
                        server.succeed("x")
                    else:
                        with self.assertRaisesRegex(td.PollingConditionError, "Polling condition failed: d"):
                            server.succeed("x")

    def test_description_from_docstring_and_argument(self) -> None:
        driver = self.make_driver()

        def documented() -> None:
            """the web server answers"""

        def plain() -> None:
            pass

        self.assertEqual(driver.polling_condition(documented).condition.description, "the web server answers")
        self.assertEqual(driver.polling_condition(plain).condition.description, "plain")
        self.assertEqual(driver.polling_condition(description="the plain one")(plain).condition.description,
                         "the plain one")

    def test_condition_using_the_machine_does_not_recurse(self) -> None:
        driver = self.make_driver()
        server = driver.machines[0]

        @driver.polling_condition
        def alive() -> None:
            server.succeed("pgrep x")

        with alive:
            server.succeed("main")
        succeeds = [r["args"]["commands"] for _, r in self.runner.requests if r["op"] == "succeed"]
        self.assertEqual(succeeds, [["pgrep x"], ["main"]])
        self.assertEqual(self.runner.ops()[0], "nested_begin")

    def test_nested_conditions_leave_in_order(self) -> None:
        driver = self.make_driver()
        a = driver.polling_condition(lambda: True, description="a")
        b = driver.polling_condition(lambda: True, description="b")
        with a:
            with b:
                self.assertEqual([c.description for c in driver.polling_conditions], ["a", "b"])
            self.assertEqual([c.description for c in driver.polling_conditions], ["a"])
        self.assertEqual(driver.polling_conditions, [])

    def test_wait_retries_until_true(self) -> None:
        driver = self.make_driver()
        results = iter([False, False, True])
        cond = driver.polling_condition(lambda: next(results), description="ready")
        cond.wait(timeout=10)
        self.assertEqual(self.clock.sleeps, [1, 1])

    def test_in_a_script(self) -> None:
        script = ("@polling_condition(seconds_interval=1)\n"
                  "def never():\n"
                  "    return False\n"
                  "\n"
                  "with never:\n"
                  "    machine.succeed('true')\n")
        with mock.patch.object(sys, "stderr", new=io.StringIO()):
            self.assertEqual(self.make_driver(script).run(), 1)
        result = self.runner.last("result")["args"]
        self.assertIn("PollingConditionError: Polling condition failed: never", result["message"])
        self.assertIn(f'File "{SCRIPT_NAME}", line 6', result["traceback"])


# --- the driver as the runner starts it ------------------------------------------------------------------------------


class MainProcessTests(unittest.TestCase):
    """Run testrig_driver.py in a child python3, as the runner does, against a FakeRunner."""

    def setUp(self) -> None:
        self.runner = FakeRunner()
        self.addCleanup(self.runner.close)

    def run_driver(self, script: str, machines: list[str] | None = None,
                   socket_path: str | None = None) -> subprocess.CompletedProcess[str]:
        script_path = os.path.join(self.runner.dir, "script.py")
        with open(script_path, "w", encoding="utf-8") as f:
            f.write(script)
        session_path = os.path.join(self.runner.dir, "session.json")
        with open(session_path, "w", encoding="utf-8") as f:
            json.dump({
                "protocol": "testrig-rpc/1",
                "machines": [{"name": n, "python_name": td.pythonize_name(n)} for n in (machines or ["server"])],
                "vlans": [1],
                "test_script": script_path,
                "test_script_name": SCRIPT_NAME,
                "out_dir": self.runner.dir,
            }, f)
        env = dict(os.environ, TESTRIG_RPC_SOCKET=socket_path or self.runner.path, TESTRIG_SESSION=session_path)
        return subprocess.run([sys.executable, "-u", "-B", str(DRIVER_FILE)], env=env, capture_output=True,
                              text=True, timeout=60)

    def test_passing_script_exits_0(self) -> None:
        proc = self.run_driver("start_all()\nout = server.succeed('true')\nt.assertEqual(out, '')\n")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(self.runner.ops(), ["start_all", "succeed", "result"])
        self.assertEqual(self.runner.last("result")["args"], {"ok": True})

    def test_failing_assertion_exits_1_with_script_line(self) -> None:
        proc = self.run_driver("start_all()\n\nt.assertEqual(machine.succeed('echo'), 'x')\n")
        self.assertEqual(proc.returncode, 1)
        result = self.runner.last("result")["args"]
        self.assertIn(f'File "{SCRIPT_NAME}", line 3, in <module>', result["traceback"])
        self.assertIn("RequestedAssertionFailed: '' != 'x'", result["traceback"])
        self.assertNotIn("testrig_driver.py", result["traceback"])
        self.assertFalse(result["ok"])
        self.assertTrue(result["message"].startswith(f"{SCRIPT_NAME}:3: RequestedAssertionFailed"), result)

    def test_syntax_error_exits_1_with_its_line(self) -> None:
        proc = self.run_driver("start_all()\nx = = 1\n\nmachine.succeed('true')\n")
        self.assertEqual(proc.returncode, 1)
        traceback_text = self.runner.last("result")["args"]["traceback"]
        self.assertIn(f'File "{SCRIPT_NAME}", line 2', traceback_text)
        self.assertIn("SyntaxError", traceback_text)
        self.assertEqual(self.runner.ops(), ["result"])
        self.assertTrue(self.runner.last("result")["args"]["message"].startswith(f"{SCRIPT_NAME}:2: SyntaxError"))

    def test_runner_gone_mid_test_exits_1_even_if_the_script_swallows_errors(self) -> None:
        def handler(request: dict[str, Any]) -> Any:
            if request["op"] == "succeed":
                raise CloseConnection()
            return None

        self.runner.handler = handler
        proc = self.run_driver("while True:\n    try:\n        machine.succeed('true')\n"
                               "    except Exception:\n        pass\n")
        self.assertEqual(proc.returncode, 1)
        self.assertIn("lost the connection to the testrig runner", proc.stderr)

    def test_no_runner_exits_1(self) -> None:
        proc = self.run_driver("start_all()\n", socket_path=os.path.join(self.runner.dir, "absent.sock"))
        self.assertEqual(proc.returncode, 1)
        self.assertIn("cannot connect to the testrig runner", proc.stderr)

    def test_missing_environment_exits_1(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESTRIG_")}
        proc = subprocess.run([sys.executable, str(DRIVER_FILE)], env=env, capture_output=True, text=True,
                              timeout=60)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("TESTRIG_RPC_SOCKET", proc.stderr)

    def test_exception_class_names_are_plain(self) -> None:
        def handler(request: dict[str, Any]) -> Any:
            if request["op"] == "wait_for_unit":
                raise RunnerError("timeout", "server: unit nginx.service not active after 900 s")
            return None

        self.runner.handler = handler
        proc = self.run_driver("machine.wait_for_unit('nginx.service')\n")
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(self.runner.last("result")["args"]["traceback"].splitlines()[-1],
                         "MachineError: server: unit nginx.service not active after 900 s")


if __name__ == "__main__":
    unittest.main()
