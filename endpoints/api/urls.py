from __future__ import annotations

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import access, traffic, views

V2 = "2.0/preview/mlflow/endpoints-v2/"

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # endpoints-v2
    path(V2 + "enable", views.EnableView.as_view(), name="api-enable"),
    path(V2 + "disable", views.DisableView.as_view(), name="api-disable"),
    path(V2 + "get-status", views.GetStatusView.as_view(), name="api-get-status"),
    path(V2 + "list", views.ListView.as_view(), name="api-list"),
    path(V2 + "list-versions", views.ListVersionsView.as_view(), name="api-list-versions"),
    path(
        V2 + "get-version-status",
        views.GetVersionStatusView.as_view(),
        name="api-get-version-status",
    ),
    path(
        V2 + "list-version-aliases",
        views.ListVersionAliasesView.as_view(),
        name="api-list-version-aliases",
    ),
    path(
        V2 + "get-supported-workload-sizes",
        views.SupportedWorkloadSizesView.as_view(),
        name="api-get-supported-workload-sizes",
    ),
    path(
        V2 + "get-version-replicas",
        views.VersionReplicasView.as_view(),
        name="api-get-version-replicas",
    ),
    path(V2 + "get-event-history", views.EventHistoryView.as_view(), name="api-get-event-history"),
    path(
        V2 + "get-version-metrics",
        views.VersionMetricsView.as_view(),
        name="api-get-version-metrics",
    ),
    path(V2 + "get-version-logs", views.VersionLogsView.as_view(), name="api-get-version-logs"),
    path(
        V2 + "get-version-build-logs",
        views.VersionBuildLogsView.as_view(),
        name="api-get-version-build-logs",
    ),
    path(
        V2 + "restart-compute-config-update",
        views.RestartComputeConfigUpdateView.as_view(),
        name="api-restart-compute-config-update",
    ),
    path(
        "2.0/preview/model-serving-api/endpoints-v2/update-compute-config",
        views.UpdateComputeConfigView.as_view(),
        name="api-update-compute-config",
    ),
    path(
        V2 + "update-served-aliases",
        traffic.UpdateServedAliasesView.as_view(),
        name="api-update-served-aliases",
    ),
    path(
        V2 + "get-traffic-splits",
        traffic.GetTrafficSplitsView.as_view(),
        name="api-get-traffic-splits",
    ),
    path(
        V2 + "update-traffic-split",
        traffic.UpdateTrafficSplitView.as_view(),
        name="api-update-traffic-split",
    ),
    path(
        V2 + "promote-traffic-split",
        traffic.PromoteTrafficSplitView.as_view(),
        name="api-promote-traffic-split",
    ),
    path(
        V2 + "rollback-traffic-split",
        traffic.RollbackTrafficSplitView.as_view(),
        name="api-rollback-traffic-split",
    ),
    path(
        V2 + "get-inference-table",
        traffic.GetInferenceTableView.as_view(),
        name="api-get-inference-table",
    ),
    path(
        V2 + "update-inference-table",
        traffic.UpdateInferenceTableView.as_view(),
        name="api-update-inference-table",
    ),
    path(V2 + "get-permissions", access.GetPermissionsView.as_view(), name="api-get-permissions"),
    path(V2 + "set-permissions", access.SetPermissionsView.as_view(), name="api-set-permissions"),
    # model registry
    path(
        "2.0/mlflow/databricks/model-versions/transition-stage",
        views.DatabricksTransitionStageView.as_view(),
        name="api-transition-stage-databricks",
    ),
    path(
        "2.0/mlflow/model-versions/transition-stage",
        views.MlflowTransitionStageView.as_view(),
        name="api-transition-stage",
    ),
    path(
        "2.0/mlflow/registered-models/alias",
        traffic.ModelAliasView.as_view(),
        name="api-registered-model-alias",
    ),
    # tokens
    path("2.0/token/create", access.TokenCreateView.as_view(), name="api-token-create"),
    path("2.0/token/list", access.TokenListView.as_view(), name="api-token-list"),
    path("2.0/token/delete", access.TokenDeleteView.as_view(), name="api-token-delete"),
    # service principals (admins)
    path(
        "2.0/service-principals/create",
        access.ServicePrincipalCreateView.as_view(),
        name="api-service-principal-create",
    ),
    path(
        "2.0/service-principals/list",
        access.ServicePrincipalListView.as_view(),
        name="api-service-principal-list",
    ),
    path(
        "2.0/service-principals/create-token",
        access.ServicePrincipalTokenView.as_view(),
        name="api-service-principal-create-token",
    ),
    # Anything else under /api/ is a JSON 404, not an HTML page.
    re_path(r"^(?P<rest>.*)$", views.not_found, name="api-not-found"),
]
