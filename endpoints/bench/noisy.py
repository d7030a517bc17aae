"""The noisy-neighbour benchmark (``manage.py bench_limits``): the demo ``iris-classifier``
scored through the front door, alone, then while a Small replica of another endpoint spins
on every core (its model's ``predict`` forks two spinning processes per core); its CPU
quota (Small: one CPU) must keep the other endpoint's median latency within twice the
quiet one (docs/performance.md, "Noisy neighbours"). Both endpoints are served by the
product, started as ``make run`` starts it.
"""

from __future__ import annotations

import os

from django.core.management.base import CommandError

from .client import HTTP_CLIENT
from .common import MODEL, Bench, serving_replica, wait
from .load import Result, destination, measure_in_subprocess, median, send_once
from .report import print_targets

NOISY_MODEL = "noisy-neighbour"
# The target: the quiet endpoint's p50 at most this many times its p50 alone.
MAX_RATIO = 2.0


def spinning_model():
    """Answers "calm"; a request with a ``spin_seconds`` column forks ``spinners`` processes
    (another column) that each spin a core for that long, and answers at once. Defined in
    a function, so it is stored by value (replicas import nothing of the benchmark)."""
    import mlflow

    class Spinner(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import os
            import time

            with_children = True
            while with_children:  # the spinners of an earlier request that are done
                try:
                    with_children = os.waitpid(-1, os.WNOHANG)[0] > 0
                except ChildProcessError:
                    with_children = False
            if "spin_seconds" not in model_input.columns:
                return ["calm"] * len(model_input)
            until = time.monotonic() + float(model_input["spin_seconds"][0])
            for _ in range(int(model_input["spinners"][0])):
                if os.fork() == 0:
                    while time.monotonic() < until:
                        pass
                    os._exit(0)
            return ["spinning"]

    return Spinner()


def register_spinner() -> None:
    import mlflow

    from endpoints import registry

    registry.configure_mlflow()
    with mlflow.start_run(experiment_id=registry.ensure_experiment("bench-models")):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=spinning_model(),
            registered_model_name=NOISY_MODEL,
            pip_requirements=["mlflow"],
        )
    registry.transition_stage(NOISY_MODEL, str(info.registered_model_version), "Production")


class NoisyNeighbourBench(Bench):
    def run(self) -> None:
        try:
            self.say("Preparing: the demo iris-classifier and a spinning model, the product …")
            self.prepare()
            register_spinner()
            self.port = self.start_product()
            self.enable(MODEL, NOISY_MODEL)
            self.wait_ready(MODEL, NOISY_MODEL)
            self._say_limits()
            self._report(self._measure())
        finally:
            self.stop()

    def _target(self, model: str, body: str | None = None) -> dict:
        path = f"/model-endpoint/{model}/Production/invocations"
        auth = {"Authorization": f"Bearer {self.token}"}
        if body is None:
            return destination("127.0.0.1", self.port, path, auth)
        return destination("127.0.0.1", self.port, path, auth, body=body)

    def _say_limits(self) -> None:
        from endpoints.models import Event, EventType

        held = Event.objects.filter(
            endpoint__registered_model_name=NOISY_MODEL,
            type=EventType.REPLICA_LIMITS_APPLIED,
        ).first()
        self.say(held.message if held else "The spinning replica started without a limits event.")

    def _spin(self, seconds: float) -> None:
        spinners = 2 * (os.cpu_count() or 1)
        body = f'{{"dataframe_records": [{{"spin_seconds": {seconds}, "spinners": {spinners}}}]}}'
        status, _, answer = send_once(self._target(NOISY_MODEL, body))
        if status != 200:
            raise CommandError(f"the spinning model did not start spinning: {status} {answer!r}")

    def _measure(self) -> dict[str, Result]:
        self.load_before = os.getloadavg()[0]
        o = self.options
        load = {"clients": 1, "total": o["requests"], "max_seconds": o["max_seconds"]}
        quiet_target = self._target(MODEL)
        runs: dict[str, list[Result]] = {"quiet": [], "noisy": []}
        for round_ in range(1, o["rounds"] + 1):
            self.say(f"Round {round_}/{o['rounds']}: {MODEL} alone, then beside the spinner …")
            runs["quiet"].append(measure_in_subprocess(HTTP_CLIENT, quiet_target, load))
            # Spinning outlasts the measurement (its time cap, and the client's start).
            self._spin(o["max_seconds"] + 10)
            runs["noisy"].append(measure_in_subprocess(HTTP_CLIENT, quiet_target, load))
            self._wait_calm(o["max_seconds"] + 10)
        return {label: median(results) for label, results in runs.items()}

    def _wait_calm(self, seconds: float) -> None:
        """Until the spinners are done: their replica, which reaps them when it answers, has
        no child left."""
        import psutil

        replica = serving_replica(NOISY_MODEL)

        def calm() -> bool:
            send_once(self._target(NOISY_MODEL))
            try:
                return not psutil.Process(replica.pid).children()
            except psutil.NoSuchProcess:
                raise CommandError("the spinning replica is gone") from None

        wait(calm, what="the spinners to stop", timeout=seconds + 30)

    def _report(self, results: dict[str, Result]) -> None:
        quiet, noisy = results["quiet"], results["noisy"]
        ratio = noisy.p50_ms / quiet.p50_ms
        self.say("")
        self.say(
            f"{MODEL} through the front door, one sequential client ({HTTP_CLIENT}), "
            f"medians of {self.options['rounds']} rounds; {os.cpu_count()} cores, load "
            f"average {self.load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end:"
        )
        self.say(f"{'':34} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'errors':>6}")
        for label, r in (("alone", quiet), ("beside a spinning Small replica", noisy)):
            self.say(f"{label:34} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.rps:7.0f} {r.errors:6}")
        self.say("")
        print_targets(
            self.say,
            "target",
            [
                (
                    "p50 beside the spinner / p50 alone",
                    f"{ratio:.2f}x",
                    f"≤ {MAX_RATIO:g}x",
                    ratio <= MAX_RATIO and not noisy.errors,
                )
            ],
        )
