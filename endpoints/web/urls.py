from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from . import access, traffic, views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.models_list, name="models"),
    path("models/<str:name>/", views.model_detail, name="model"),
    path("models/<str:name>/transition/", views.model_transition, name="model-transition"),
    path("models/<str:name>/serving/", views.serving, name="serving"),
    path("models/<str:name>/serving/enable/", views.serving_enable, name="serving-enable"),
    path("models/<str:name>/serving/disable/", views.serving_disable, name="serving-disable"),
    path("models/<str:name>/serving/compute/", views.compute_update, name="compute-update"),
    path(
        "models/<str:name>/serving/compute/restart/",
        views.compute_restart,
        name="compute-restart",
    ),
    path("models/<str:name>/serving/alias/", traffic.alias_set, name="alias-set"),
    path(
        "models/<str:name>/serving/served-aliases/",
        traffic.served_aliases_update,
        name="served-aliases",
    ),
    path("models/<str:name>/serving/split/", traffic.traffic_split, name="traffic-split"),
    path(
        "models/<str:name>/serving/inference/",
        traffic.inference_update,
        name="inference-update",
    ),
    path(
        "models/<str:name>/serving/inference/download/",
        traffic.inference_download,
        name="inference-download",
    ),
    path("models/<str:name>/serving/example/", views.serving_example, name="serving-example"),
    path("models/<str:name>/serving/invoke/", views.serving_invoke, name="serving-invoke"),
    path("models/<str:name>/permissions/", access.permissions, name="permissions"),
    path("tokens/", access.tokens, name="tokens"),
    path("tokens/<int:pk>/revoke/", access.token_revoke, name="token-revoke"),
    path("service-principals/", access.principals, name="principals"),
    path(
        "service-principals/<int:pk>/tokens/",
        access.principal_token,
        name="principal-token",
    ),
]
