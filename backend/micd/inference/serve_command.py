"""`micd serve`: a warm worker that answers prediction requests, one JSON object per line on stdin and stdout.

Python, torch, MONAI and SimpleITK are imported once and the models stay loaded (micd.inference.model_cache), so a
second segmentation costs the prediction, not the start-up. No network socket: the caller owns the pipes.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import traceback
from typing import Dict, Optional

from micd import __version__
from micd.contract import EXIT_CANCELLED, EXIT_OK
from micd.inference.cli_common import CommandIO, Reporter

DESCRIPTION = """A long-lived prediction worker. Requests on stdin, one JSON object per line:
  {"id": "1", "command": "predict", "model": DIR, "input": FILE, "output": FILE, ...}   (keys: micd predict's options,
      e.g. "device": "cpu", "tta": true, "uncertainty": PATH, "overwrite": true)
  {"id": "2", "command": "suggest", "model": DIR, "input": [FOLDER], ...}               (micd suggest's options)
  {"id": "3", "command": "info", "model": DIR}
  {"id": "4", "command": "cancel", "target": "1"}   stops request 1 at its next window batch (or before it starts)
  {"command": "shutdown"}                           exit 0 once the running request has stopped
Answers on stdout: first {"event": "ready"}; then the events micd predict / micd suggest write (plan, progress,
prediction, scored, done, error), each with the request's "id". Every request ends with exactly one "done" or
"error" event bearing its id; requests run one at a time, in order; cancel and shutdown are read while one runs.
A bad request gets an "error" event (kind "data") and the worker goes on. End of stdin is a shutdown. Models stay
loaded, least recently used out first, within --max-models and --max-model-gb; inputs are read afresh each time."""

CONTROL = ("cancel", "shutdown")


def register(sub) -> None:
    p = sub.add_parser("serve", help="answer prediction requests on stdin (a warm worker)", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-models", type=int, default=4, help="models kept loaded at most (default 4)")
    p.add_argument("--max-model-gb", type=float, default=2.0,
                   help="memory the loaded models' weights may take, in GiB (default 2; the model in use always stays)")
    p.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=run)


class RequestError(ValueError):
    """A request that cannot be run as given."""


class _RequestParser(argparse.ArgumentParser):
    def error(self, message):  # argparse would exit the worker
        raise RequestError(message)

    def exit(self, status=0, message=None):
        raise RequestError(message or "not a request")


def _request_parser():
    """micd predict's and micd suggest's own options (a request means what the same command line would): the parser
    and its subcommand parsers by name."""
    from micd.inference import command, suggest_command

    parser = _RequestParser(prog="micd serve", add_help=False)
    sub = parser.add_subparsers(dest="command")
    command.register(sub)
    suggest_command.register(sub)
    return parser, sub.choices


def request_argv(request: dict, commands: Dict[str, argparse.ArgumentParser]) -> list:
    """The command line a request stands for: keys are long option names (with _ or -), true turns a switch on."""
    cmd = request.get("command")
    actions = {a.dest: a for a in commands[cmd]._actions if a.option_strings}  # argparse lists no actions publicly
    argv = [cmd]
    for key, value in request.items():
        if key in ("id", "command"):
            continue
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in actions or dest == "help":
            raise RequestError(f"{cmd} has no option {key!r}; see `micd {cmd} --help`")
        action, flag = actions[dest], actions[dest].option_strings[0]
        if action.nargs == 0:  # a switch (store_true)
            if not isinstance(value, bool):
                raise RequestError(f"{key}: true or false, not {value!r}")
            argv += [flag] if value else []
        elif value is None:
            continue
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        elif isinstance(value, (dict, bool)):
            raise RequestError(f"{key} takes a value, not {value!r}")
        else:
            argv += [flag, str(value)]
    return argv


class RequestReporter(Reporter):
    """A command's events, each with the request's id, on the worker's stdout."""

    def __init__(self, worker: "Worker", rid: Optional[str], program: str):
        super().__init__(program)
        self.worker, self.rid, self.ended = worker, rid, False

    def emit(self, record: dict, bar=None) -> None:
        if record.get("event") in ("done", "error"):
            self.ended = True
        self.worker.emit({"id": self.rid, **record})


class Worker:
    def __init__(self, cache, out=None):
        self.cache = cache
        self.out = out or sys.stdout
        self._write = threading.Lock()
        self._state = threading.Lock()
        self._queue: "queue.Queue[Optional[dict]]" = queue.Queue()
        self._running: Optional[str] = None
        self._queued: list = []  # ids waiting, in order
        self._stop: set = set()  # ids of queued or running requests asked to stop
        self._closing = False  # shutdown asked: what runs stops at its next window batch, what waits never starts
        self._parser, self._commands = _request_parser()

    def emit(self, record: dict) -> None:
        with self._write:
            self.out.write(json.dumps(record) + "\n")
            self.out.flush()

    # ---------------------------------------------------------------- the reader thread
    def read(self, stream) -> None:
        for line in stream:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
            except ValueError as e:
                self.emit({"id": None, "event": "error", "kind": "data", "message": f"not a request: {e}",
                           "hint": "send one JSON object per line, e.g. {\"id\": \"1\", \"command\": \"predict\", ...}"})
                continue
            command = request.get("command")
            if command == "shutdown":
                break
            if command == "cancel":
                self._cancel(request)
                continue
            with self._state:
                self._queued.append(_rid(request))
            self._queue.put(request)
        self._shutdown()  # also at the end of stdin: the caller is gone

    def _cancel(self, request: dict) -> None:
        target = None if request.get("target") is None else str(request["target"])
        with self._state:
            running = target is not None and target == self._running
            found = running or (target is not None and target in self._queued)
            if found:  # an unknown or finished id is not remembered (it could be used again)
                self._stop.add(target)
        self.emit({"id": _rid(request), "event": "done", "command": "cancel", "target": target, "running": running,
                   "found": found})

    def _shutdown(self) -> None:
        with self._state:
            self._closing = True
        self._queue.put(None)

    def should_stop(self, rid: Optional[str]) -> bool:
        return self._closing or (rid is not None and rid in self._stop)

    # ---------------------------------------------------------------- the main thread
    def serve(self) -> int:
        self.emit({"event": "ready", "pid": os.getpid(), "version": __version__,
                   "commands": ["predict", "suggest", "info", *CONTROL]})
        while True:
            request = self._queue.get()
            if request is None:
                return EXIT_OK
            rid = _rid(request)
            with self._state:
                self._queued.remove(rid)
                stopped = self._closing or rid in self._stop
                self._stop.discard(rid)
                self._running = None if stopped else rid
            if stopped:  # cancelled, or the worker is shutting down, before it started
                self.emit({"id": rid, "event": "error", "kind": "cancelled", "message": "cancelled before it "
                           "started" + (" (the worker is shutting down)" if self._closing else ""), "hint": ""})
                continue
            try:
                self.run_request(request, rid)
            finally:
                with self._state:
                    self._running = None
                    self._stop.discard(rid)

    def run_request(self, request: dict, rid: Optional[str]) -> None:
        command = request.get("command")
        report = RequestReporter(self, rid, f"micd serve ({command})")
        code = EXIT_OK
        try:
            if command == "info":
                self._info(request, report)
            elif command not in ("predict", "suggest"):
                report.fail(f"unknown command {command!r}", "use predict, suggest, info, cancel or shutdown")
            else:
                args = self._parser.parse_args(request_argv(request, self._commands))
                io = CommandIO(report, self.cache.get, should_stop=lambda: self.should_stop(rid), bars=False)
                code = args.func(args, io)
        except RequestError as e:
            report.fail(f"bad {command} request: {e}")
            return
        except Exception as e:  # noqa: BLE001 - the worker must go on
            traceback.print_exc(file=sys.stderr)
            report.fail(f"{type(e).__name__}: {e}".splitlines()[0][:500], "this is a bug; the worker's stderr has "
                        "the traceback", kind="internal", code=1)
            return
        if not report.ended:  # every request ends with one done or error
            report.emit({"event": "done"} if code == EXIT_OK else
                        {"event": "error", "kind": "cancelled" if code == EXIT_CANCELLED else "internal",
                         "message": f"{command} ended with exit code {code}", "hint": ""})

    def _info(self, request: dict, report: RequestReporter) -> None:
        from micd.model_package import ModelPackageError

        if not request.get("model"):
            raise RequestError("info needs \"model\": a model folder")
        try:
            package = self.cache.get(str(request["model"]))
        except ModelPackageError as e:
            report.fail(str(e))
            return
        report.emit({"event": "done", "model": package.path, "name": package.meta.get("name"),
                     "labels": package.meta["labels"], "branches": list(package.networks), "cache": self.cache.describe()})


def _rid(request: dict) -> Optional[str]:
    return None if request.get("id") is None else str(request["id"])


def run(args: argparse.Namespace) -> int:
    import torch

    from micd.inference.model_cache import ModelCache

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    # Everything a request needs is imported before "ready": a worker started ahead of the first click is warm.
    import micd.data.io  # noqa: F401 - SimpleITK
    import micd.inference.predictor  # noqa: F401 - MONAI's sliding windows
    import micd.inference.suggest  # noqa: F401
    worker = Worker(ModelCache(args.max_models, int(args.max_model_gb * 2 ** 30)))
    reader = threading.Thread(target=worker.read, args=(sys.stdin,), daemon=True, name="micd-serve-stdin")
    reader.start()
    return worker.serve()
