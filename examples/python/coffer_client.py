#!/usr/bin/env python3
"""A Coffer client in Python: put, get, compare-and-set, versions and list, over gRPC.

Coffer's API is plain gRPC over mutual TLS (proto/coffer/v1/api.proto), so any language's gRPC
library can call it. This script needs only grpcio and protobuf (Debian: python3-grpcio and
python3-protobuf; or pip install grpcio protobuf), and the message classes protoc generates from
the API, made once from the repository's root (protobuf-compiler provides protoc):

    mkdir -p gen && protoc -I proto --python_out=gen proto/coffer/v1/api.proto

Run it with an identity (`coffer identity issue NAME --policy P --out DIR` writes these
variables to DIR/client.env):

    COFFER_CA=DIR/ca.crt COFFER_CERT=DIR/NAME.crt COFFER_KEY=DIR/NAME.key PYTHONPATH=gen \\
        python3 examples/python/coffer_client.py localhost:7401 app/greeting

The host you dial must be a name in the manager's certificate: a manager names its advertise
host, `localhost` and `127.0.0.1`, and what `--san` added at init or join. When
you must dial another address (a tunnel, a load balancer), set COFFER_SERVER_NAME to a name the
certificate holds: the certificate is then checked against that name instead.
"""

import os
import sys

import grpc

from coffer.v1 import api_pb2

# Every call has a deadline: a manager that cannot answer (no leader, say) fails the call.
TIMEOUT_S = 10


def connect(address):
    """A channel to one manager, over mutual TLS, trusting only the cluster's CA."""

    def read(variable):
        with open(os.environ[variable], "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("COFFER_CA"),
        private_key=read("COFFER_KEY"),
        certificate_chain=read("COFFER_CERT"),
    )
    options = []
    server_name = os.environ.get("COFFER_SERVER_NAME")
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, credentials, options)


class Secrets:
    """The calls of the coffer.v1.Secrets service this script uses, one callable per method."""

    def __init__(self, channel):
        def method(name, request, response):
            return channel.unary_unary(
                f"/coffer.v1.Secrets/{name}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )

        self.put = method("Put", api_pb2.PutSecretRequest, api_pb2.PutSecretResponse)
        self.get = method("Get", api_pb2.GetSecretRequest, api_pb2.GetSecretResponse)
        self.versions = method(
            "Versions", api_pb2.SecretVersionsRequest, api_pb2.SecretVersionsResponse
        )
        self.list = method("List", api_pb2.ListSecretsRequest, api_pb2.ListSecretsResponse)


def put(secrets, name, value, cas=None):
    """Writes a new version and returns its number. With `cas`, only if the secret is at that
    version now (0: only if it does not exist); otherwise the call fails FAILED_PRECONDITION."""
    request = api_pb2.PutSecretRequest(name=name, value=value)
    if cas is not None:
        request.cas.version = cas
    return secrets.put(request, timeout=TIMEOUT_S).version


def get(secrets, name):
    """The current value and its version (a linearizable read, on any manager)."""
    reply = secrets.get(api_pb2.GetSecretRequest(name=name), timeout=TIMEOUT_S)
    return reply.value, reply.version


def list_names(secrets, prefix):
    """Every name under `prefix`, page by page (a listing never holds values)."""
    names, token = [], ""
    while True:
        page = secrets.list(
            api_pb2.ListSecretsRequest(prefix=prefix, page_token=token), timeout=TIMEOUT_S
        )
        names += [secret.name for secret in page.secrets]
        token = page.next_page_token
        if not token:
            return names


def demo(secrets, name, forbidden):
    # A real program would not print a secret's value; this demo writes its own.
    first = put(secrets, name, b"hello from python")
    print(f"put {name}: version {first}")
    value, version = get(secrets, name)
    print(f"get {name}: {value.decode()!r} (version {version})")

    # Compare-and-set: write only if nobody wrote since we read.
    second = put(secrets, name, b"updated from python", cas=first)
    print(f"cas put at version {first}: version {second}")
    try:
        put(secrets, name, b"a lost update", cas=first)
        print(f"cas put at version {first}: accepted, but the secret had moved on")
        return 1
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        print(f"cas put at version {first}: refused, {error.code().name}: {error.details()}")

    reply = secrets.versions(api_pb2.SecretVersionsRequest(name=name), timeout=TIMEOUT_S)
    print(f"versions of {name}: " + ", ".join(str(v.version) for v in reply.versions))
    prefix = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
    print(f"list {prefix}: " + ", ".join(list_names(secrets, prefix)))
    value, version = get(secrets, name)
    print(f"get {name}: {value.decode()!r} (version {version})")

    # Refusals carry a status code for the kind, a message for people, and a stable reason for
    # programs (the coffer-error-reason trailer; also google.rpc.ErrorInfo in grpc-status-details-bin).
    missing = name + "-missing"
    try:
        get(secrets, missing)
        print(f"get {missing}: found, but it was never written")
        return 1
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        print(f"get {missing}: refused, {error.code().name} ({reason(error)}): {error.details()}")
    if forbidden is not None:
        try:
            put(secrets, forbidden, b"not allowed")
            print(f"put {forbidden}: accepted, but this identity may not write it")
            return 1
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.PERMISSION_DENIED:
                raise
            print(f"put {forbidden}: refused, {error.code().name} ({reason(error)}): {error.details()}")
    return 0


def reason(error):
    """The refusal's stable reason, from the plain trailer every Coffer error carries."""
    for key, value in error.trailing_metadata() or ():
        if key == "coffer-error-reason":
            return value
    return "no reason given"


def main(argv):
    if len(argv) not in (2, 3, 4):
        print(f"usage: {argv[0]} HOST:PORT [SECRET_NAME [A_NAME_THIS_IDENTITY_MAY_NOT_WRITE]]", file=sys.stderr)
        return 2
    missing = [v for v in ("COFFER_CA", "COFFER_CERT", "COFFER_KEY") if not os.environ.get(v)]
    if missing:
        print(f"error: set {', '.join(missing)} (paths to PEM files)", file=sys.stderr)
        return 2
    name = argv[2] if len(argv) >= 3 else "demo/greeting"
    forbidden = argv[3] if len(argv) == 4 else None
    try:
        with connect(argv[1]) as channel:
            return demo(Secrets(channel), name, forbidden)
    except grpc.RpcError as error:
        # A refused handshake (a name the certificate does not hold, another CA) is UNAVAILABLE;
        # a client certificate the cluster does not accept is UNAUTHENTICATED.
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
