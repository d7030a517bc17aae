"""The MLflow deployments plugin: ``mlflow deployments … -t serving-ui`` drives the product.

Registered under the ``mlflow.deployments`` entry point group as the target ``serving-ui``
(``pyproject.toml``), so ``mlflow deployments create|update|delete|get|list|predict`` and
``mlflow.deployments.get_deploy_client("serving-ui")`` talk to a running Serving UI over its
REST API and scoring URLs. It imports no Django and nothing else of the product: a client
machine needs only MLflow. MLflow's plugin manager requires exactly this module surface:
``run_local``, ``target_help`` and one ``BaseDeploymentClient`` subclass.
"""

from __future__ import annotations

from .client import ServingUIDeploymentClient, run_local, target_help

__all__ = ["ServingUIDeploymentClient", "run_local", "target_help"]
