"""The REST API's request parsing and response shapes, by the calls they serve:

- ``common``: strict JSON fields, the model, version and target arguments, errors;
- ``endpoints``: endpoints, versions, compute configs, replicas, events, metrics, logs
  and stage transitions;
- ``access``: tokens, permissions and service principals;
- ``traffic``: MLflow aliases, traffic splits and inference tables.
"""
