"""The REST API's access calls: tokens, per-endpoint permissions and service principals.

Views parse, call ``endpoints.services`` or ``endpoints.selectors`` and answer; who may do
what (CAN_MANAGE for permissions, admins for service principals) is checked there.
"""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response

from endpoints import selectors, services
from endpoints.models import AccessToken

from .base import GET_ARGS, PERMISSIONS, PRINCIPALS, TOKENS, ApiView, ManageView, doc, parse
from .serializers.access import (
    PermissionsResponse,
    ServicePrincipalCreateRequest,
    ServicePrincipalInfo,
    ServicePrincipalListResponse,
    ServicePrincipalResponse,
    ServicePrincipalTokenRequest,
    SetPermissionsRequest,
    TokenCreateRequest,
    TokenCreateResponse,
    TokenDeleteRequest,
    TokenInfo,
    TokenListResponse,
)
from .serializers.common import EmptyResponse, ModelNameRequest

# --- tokens ------------------------------------------------------------------------------------


def calling_token(request: Request) -> AccessToken | None:
    """The token this request was authenticated with (None for a browser session): a token
    created with it never outlives it."""
    return request.auth if isinstance(request.auth, AccessToken) else None


class TokenCreateView(ManageView):
    @doc(
        "tokenCreate",
        "Create a personal access token",
        tag=TOKENS,
        request=TokenCreateRequest,
        response=TokenCreateResponse,
        errors=(429,),
        description="token_value is shown only in this answer; only its hash is stored. "
        "A token created by a request authenticated with a token expires no later than "
        "that token and is revoked with it.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, TokenCreateRequest)
        token, plaintext = services.token_create(
            user=request.user,
            name=args["comment"],
            expires_at=services.token_expiry(lifetime_seconds=args["lifetime_seconds"]),
            parent=calling_token(request),
        )
        return Response({"token_value": plaintext, "token_info": TokenInfo(token).data})


class TokenListView(ApiView):
    @doc("tokenList", "The caller's active tokens", tag=TOKENS, response=TokenListResponse)
    def get(self, request: Request) -> Response:
        tokens = selectors.active_tokens(request.user)
        return Response({"token_infos": TokenInfo(tokens, many=True).data})


class TokenDeleteView(ManageView):
    @doc(
        "tokenDelete",
        "Revoke one of the caller's tokens",
        tag=TOKENS,
        request=TokenDeleteRequest,
        response=EmptyResponse,
        errors=(429,),
    )
    def post(self, request: Request) -> Response:
        args = parse(request, TokenDeleteRequest)
        services.token_revoke(token_id=int(args["token_id"]), user=request.user)
        return Response({})


# --- permissions ---------------------------------------------------------------------------------


class GetPermissionsView(ApiView):
    @doc(
        "endpointsV2GetPermissions",
        "Who may view, query or manage an endpoint",
        tag=PERMISSIONS,
        query=ModelNameRequest,
        response=PermissionsResponse,
        description=GET_ARGS + " Admins hold CAN_MANAGE everywhere and are not listed.",
    )
    def get(self, request: Request) -> Response:
        args = parse(request, ModelNameRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        return Response(selectors.access_control_list_json(endpoint))


class SetPermissionsView(ManageView):
    @doc(
        "endpointsV2SetPermissions",
        "Grant or remove users' permissions on an endpoint",
        tag=PERMISSIONS,
        request=SetPermissionsRequest,
        response=PermissionsResponse,
        errors=(429,),
        description="Needs CAN_MANAGE. A null permission_level removes the user's grant. "
        "All entries apply, or none.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, SetPermissionsRequest)
        endpoint = services.access_control_set(
            name=args["registered_model_name"],
            entries=[(e["user_name"], e["permission_level"]) for e in args["access_control_list"]],
            by=request.user,
        )
        return Response(selectors.access_control_list_json(endpoint))


# --- service principals (admins) -------------------------------------------------------------


class ServicePrincipalCreateView(ManageView):
    @doc(
        "servicePrincipalCreate",
        "Create a service principal (admins)",
        tag=PRINCIPALS,
        request=ServicePrincipalCreateRequest,
        response=ServicePrincipalResponse,
        errors=(409, 429),
        description="A non-human identity for automation: it cannot log in to the UI, it "
        "holds tokens and per-endpoint permissions like a user.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, ServicePrincipalCreateRequest)
        principal = services.service_principal_create(
            username=args["user_name"], display_name=args["display_name"], by=request.user
        )
        return Response({"service_principal": ServicePrincipalInfo(principal).data})


class ServicePrincipalListView(ApiView):
    @doc(
        "servicePrincipalList",
        "Every service principal (admins)",
        tag=PRINCIPALS,
        response=ServicePrincipalListResponse,
    )
    def get(self, request: Request) -> Response:
        principals = selectors.service_principals(user=request.user)
        return Response({"service_principals": ServicePrincipalInfo(principals, many=True).data})


class ServicePrincipalTokenView(ManageView):
    @doc(
        "servicePrincipalCreateToken",
        "Create a token for a service principal (admins)",
        tag=PRINCIPALS,
        request=ServicePrincipalTokenRequest,
        response=TokenCreateResponse,
        errors=(429,),
        description="token_value is shown only in this answer. Without lifetime_seconds "
        "it expires after SERVING_SERVICE_PRINCIPAL_TOKEN_DAYS (90 days by default); a "
        "request authenticated with a token caps it at that token's expiry.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, ServicePrincipalTokenRequest)
        principal = selectors.service_principal_named(
            user=request.user, user_name=args["user_name"]
        )
        token, plaintext = services.service_principal_token_create(
            principal=principal,
            by=request.user,
            name=args["comment"],
            expires_at=services.token_expiry(lifetime_seconds=args["lifetime_seconds"]),
            parent=calling_token(request),
        )
        return Response({"token_value": plaintext, "token_info": TokenInfo(token).data})
