"""Tiny registered models for tests on the real stack: each version answers a constant (so a
test can tell versions apart), refuses to load, or holds a request until a gate opens.

The classes are defined inside functions so that cloudpickle stores them by value: model
servers load them without importing the test modules.
"""

from __future__ import annotations

from endpoints import registry


def constant_model(value: str):
    """A pyfunc model answering ``value`` for every row."""
    import mlflow

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [value] * len(model_input)

    return Constant()


def unloadable_model():
    """A pyfunc model whose server exits while loading it."""
    import mlflow

    class Unloadable(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            raise RuntimeError("this model refuses to load: its weights are corrupt")

        def predict(self, context, model_input, params=None):
            return []

    return Unloadable()


def gate_model(value: str):
    """Answers ``value``; a request with a ``gate`` column (an ``HttpGate``'s URL) first
    tells the gate it arrived, then waits (at most a minute) until the gate opens. The gate
    is reached over loopback HTTP: a sandboxed model sees none of the test's files."""
    import mlflow

    class Gate(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import time
            import urllib.request

            if "gate" in model_input.columns:
                url = str(model_input["gate"][0])
                urllib.request.urlopen(url + "/arrive", data=b"", timeout=10).close()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    with urllib.request.urlopen(url + "/open", timeout=10) as answer:
                        if answer.read() == b"yes":
                            break
                    time.sleep(0.02)
            return [value] * len(model_input)

    return Gate()


class HttpGate:
    """The test's side of ``gate_model``: counts arrivals and opens when told, served on
    127.0.0.1 (the network is the one thing a sandboxed model shares with the test)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        gate = self
        self.arrived = 0
        self.opened = threading.Event()
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with gate._lock:
                    gate.arrived += 1
                self._answer(b"ok")

            def do_GET(self) -> None:
                self._answer(b"yes" if gate.opened.is_set() else b"no")

            def _answer(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def open(self) -> None:
        self.opened.set()

    def close(self) -> None:
        self.opened.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HttpGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def register(name: str, model, stage: str | None = None) -> str:
    """Log ``model`` as a new version of ``name``; with ``stage``, move it there (archiving
    the stage's other versions). Returns the version number."""
    import mlflow

    registry.configure_mlflow()
    with mlflow.start_run(experiment_id=registry.ensure_experiment("test-models")):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            registered_model_name=name,
            pip_requirements=["mlflow"],
        )
    version = str(info.registered_model_version)
    if stage:
        registry.transition_stage(name, version, stage, archive_existing_versions=True)
    return version
