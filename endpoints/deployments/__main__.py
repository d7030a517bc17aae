"""``python -m endpoints.deployments predict``: MLflow's ``predict`` command, reading CSV too.

MLflow's own ``mlflow deployments predict`` reads its input with ``pandas.read_json``, so it
takes JSON only. This command has the same options and output and reads ``*.csv`` with
``pandas.read_csv`` (anything else as MLflow would).
"""

from __future__ import annotations

import sys

import click
import pandas as pd

from .client import ServingUIDeploymentClient
from .http import TARGET


def read_inputs(path: str) -> pd.DataFrame:
    if path.lower().endswith(".csv"):
        return pd.read_csv(path)
    return pd.read_json(path)


@click.group()
def cli() -> None:
    """Serving UI's deployments plugin."""


@cli.command()
@click.option("--target", "-t", default=TARGET, show_default=True, help="Deployment target URI.")
@click.option("--name", required=True, help="<model>, <model>/Staging or <model>/<version>.")
@click.option("--input-path", "-I", required=True, help="A .json or .csv file of input rows.")
@click.option("--output-path", "-O", help="Write the predictions here instead of stdout.")
def predict(target: str, name: str, input_path: str, output_path: str | None) -> None:
    """Score the rows of INPUT_PATH on the deployment NAME."""
    result = ServingUIDeploymentClient(target).predict(name, read_inputs(input_path))
    if output_path:
        result.to_json(output_path)
    else:
        click.echo(result.to_json())


if __name__ == "__main__":
    sys.exit(cli())
