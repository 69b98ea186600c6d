"""The OpenAPI document generated from the http annotations: valid, complete, true to the proto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import grpc_tools
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_tools import protoc
from jsonschema.exceptions import ValidationError
from openapi_spec_validator import validate

from balances.v1 import balances_pb2 as pb
from service.gateway.errors import details_from_trailers
from service.gateway.openapi import openapi_document
from service.gateway.routes import routes_of
from tests.support.expected import as_json
from tests.support.openapi_checks import (
    assert_valid,
    balances_document,
    component,
    error_schema,
    ok_schema,
    schema_validator,
)
from tests.support.stack import Stack

WALLET_PATH = "/v1/wallets/{walletId}/balance"
CUSTOMER_PATH = "/v1/customers/{customerId}/balances"


# --- the Balances API -------------------------------------------------------------------------


def test_balances_document_is_valid_openapi_3() -> None:
    document = balances_document()
    validate(document)  # raises on any violation of the OpenAPI 3.0 schema
    assert document["openapi"].startswith("3.")
    assert document["info"] == {"title": "Balances API", "version": "v1"}


def test_balances_document_has_both_paths_with_their_path_parameter() -> None:
    document = balances_document()
    watch_paths = {WALLET_PATH + ":watch", CUSTOMER_PATH + ":watch"}
    assert set(document["paths"]) == {WALLET_PATH, CUSTOMER_PATH, *watch_paths}
    # Server-streaming: each newline-delimited object holds a result or an error.
    assert ok_schema(document, WALLET_PATH + ":watch") == {
        "type": "object",
        "title": "Stream result of balances.v1.WatchWalletBalanceResponse",
        "properties": {
            "result": component("balances.v1.WatchWalletBalanceResponse"),
            "error": component("google.rpc.Status"),
        },
    }
    wallet = document["paths"][WALLET_PATH]
    customer = document["paths"][CUSTOMER_PATH]
    assert set(wallet) == set(customer) == {"get"}
    assert wallet["get"]["operationId"] == "BalancesService_GetWalletBalance"
    assert customer["get"]["operationId"] == "BalancesService_GetCustomerBalances"
    as_of = [  # the request's other fields, by query (a oneof: one or the other)
        {
            "name": "atBlock",
            "in": "query",
            "schema": {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
        },
        {"name": "atTime", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    ]
    assert wallet["get"]["parameters"] == [
        {"name": "walletId", "in": "path", "required": True, "schema": {"type": "string"}},
        *as_of,
    ]
    assert customer["get"]["parameters"] == [
        {"name": "customerId", "in": "path", "required": True, "schema": {"type": "string"}},
        *as_of,
    ]
    assert "requestBody" not in wallet["get"]
    assert ok_schema(document, WALLET_PATH) == component("balances.v1.GetWalletBalanceResponse")
    assert ok_schema(document, CUSTOMER_PATH) == component(
        "balances.v1.GetCustomerBalancesResponse"
    )
    assert error_schema(document, WALLET_PATH) == component("google.rpc.Status")


def test_balances_schemas_follow_the_proto3_json_mapping() -> None:
    schemas = balances_document()["components"]["schemas"]
    wallet = schemas["balances.v1.GetWalletBalanceResponse"]
    assert list(wallet["properties"]) == [
        "walletId",
        "network",
        "balances",
        "lastUpdated",
        "blockNumber",
        "stale",
    ]
    assert wallet["properties"]["walletId"] == {"type": "string"}
    assert wallet["properties"]["stale"] == {"type": "boolean"}
    assert wallet["properties"]["lastUpdated"] == {"type": "string", "format": "date-time"}
    assert wallet["properties"]["blockNumber"]["type"] == "string"
    assert wallet["properties"]["blockNumber"]["format"] == "uint64"
    assert wallet["properties"]["balances"] == {
        "type": "array",
        "items": component("balances.v1.TokenBalance"),
    }
    # Printed even when unpopulated, so always there; a message field (lastUpdated) and an
    # optional one (stale, only there when true) have presence.
    assert wallet["required"] == ["walletId", "network", "balances", "blockNumber"]
    customer_wallet = schemas["balances.v1.CustomerWallet"]
    assert customer_wallet["properties"]["stale"] == {"type": "boolean"}
    assert "stale" not in customer_wallet["required"]
    token = schemas["balances.v1.TokenBalance"]
    assert token["properties"]["amount"] == {"type": "string"}
    assert token["properties"]["decimals"]["type"] == "integer"
    customer = schemas["balances.v1.GetCustomerBalancesResponse"]
    assert customer["properties"]["totalBalance"] == component("balances.v1.Money")
    assert customer["properties"]["wallets"]["items"] == component("balances.v1.CustomerWallet")
    assert schemas["balances.v1.Money"]["required"] == ["amount", "currency"]
    status = schemas["google.rpc.Status"]
    assert status["properties"]["code"]["type"] == "integer"
    assert status["properties"]["message"] == {"type": "string"}
    assert status["properties"]["details"]["items"] == component("google.protobuf.Any")
    assert schemas["google.protobuf.Any"]["properties"]["@type"] == {"type": "string"}
    assert schemas["google.protobuf.Any"]["additionalProperties"] is True


def test_api_key_header_is_a_global_security_requirement() -> None:
    document = balances_document()
    schemes = document["components"]["securitySchemes"]
    assert len(schemes) == 1
    [(name, scheme)] = schemes.items()
    assert scheme == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert document["security"] == [{name: []}]


def test_response_schema_rejects_a_body_of_the_wrong_shape() -> None:
    document = balances_document()
    schema = ok_schema(document, WALLET_PATH)
    good = {
        "walletId": "wal_abc123",
        "network": "polygon",
        "balances": [{"currency": "USDC", "amount": "1250.50", "decimals": 6}],
        "lastUpdated": "2024-01-15T10:30:00Z",
        "blockNumber": "42",
    }
    assert_valid(document, schema, good)
    assert_valid(document, schema, {**good, "stale": True})
    validator = schema_validator(document, schema)
    for bad in (
        {**good, "blockNumber": 42},
        {**good, "lastUpdated": "yesterday"},
        {**good, "balances": [{"currency": "USDC", "amount": 1250.5, "decimals": 6}]},
        {k: v for k, v in good.items() if k != "walletId"},
        {**good, "balances": None},
        {**good, "stale": "yes"},
    ):
        with pytest.raises(ValidationError):
            validator.validate(bad)


# --- a proto compiled only for these tests ----------------------------------------------------

TEST_PROTO = """
syntax = "proto3";

package openapitest.v1;

import "google/api/annotations.proto";
import "google/protobuf/any.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

service LibraryService {
  rpc CreateBook(CreateBookRequest) returns (Book) {
    option (google.api.http) = {post: "/v1/shelves/{shelf_id}/books" body: "book"};
  }
  rpc UpdateBook(Book) returns (Book) {
    option (google.api.http) = {
      patch: "/v1/{name=shelves/*/books/*}"
      body: "*"
      additional_bindings {put: "/v1/books/{name}" body: "*"}
    };
  }
  rpc ListBooks(ListBooksRequest) returns (ListBooksResponse) {
    option (google.api.http) = {
      get: "/v1/shelves/{shelf_id}/books"
      response_body: "books"
      additional_bindings {get: "/v1/books"}
    };
  }
  rpc ImportBooks(ImportBooksRequest) returns (ImportBooksResponse) {
    option (google.api.http) = {post: "/v1/books:import" body: "*"};
  }
  rpc NotOverHttp(Book) returns (Book);
}

enum Genre {
  GENRE_UNSPECIFIED = 0;
  GENRE_FICTION = 1;
  GENRE_POETRY = 2;
}

message Book {
  string name = 1;
  string title = 2;
  Genre genre = 3;
  int64 page_count = 4;
  repeated string authors = 5;
  map<string, int64> ratings = 6;
  google.protobuf.Timestamp published = 7;
  optional uint32 edition = 8;
  bytes cover = 9;
  double price = 10;
  repeated Book sequels = 11;
  Shelf shelf = 12;
  int32 year = 13 [json_name = "yearPublished"];
}

message Shelf {
  string name = 1;
  map<string, Shelf> neighbours = 2;
}

message CreateBookRequest {
  int64 shelf_id = 1;
  Book book = 2;
  string request_id = 3;
}

message ListBooksRequest {
  message Filter {
    string author_name = 1;
    google.protobuf.Int32Value min_pages = 2;
    Filter and_also = 3;
    Genre genre = 4;
  }
  int64 shelf_id = 1;
  Filter filter = 2;
  repeated Genre genres = 3;
  int32 page_size = 4;
  repeated Book exclude = 5;
  map<string, string> labels = 6;
  google.protobuf.Timestamp since = 7;
  google.protobuf.Struct extra = 8;
  google.protobuf.Any hint = 9;
  repeated uint64 ids = 10;
}

message ListBooksResponse {
  repeated Book books = 1;
  string next_page_token = 2;
}

message ImportBooksRequest {
  repeated Book books = 1;
  google.protobuf.Struct options = 2;
}

message ImportBooksResponse {
  uint64 imported = 1;
  repeated google.protobuf.Any warnings = 2;
  google.protobuf.Value note = 3;
}
"""


@pytest.fixture(scope="session")
def library_pool(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pool.DescriptorPool:
    """The test proto, compiled once, in a pool of its own (never the default pool)."""
    root = tmp_path_factory.mktemp("openapitest")
    proto = root / "openapitest" / "v1" / "library.proto"
    proto.parent.mkdir(parents=True)
    proto.write_text(TEST_PROTO)
    googleapis = Path(annotations_pb2.__file__).parents[2]
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    descriptor_set = root / "library.binpb"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{googleapis}",
            f"-I{well_known}",
            "--include_imports",
            f"--descriptor_set_out={descriptor_set}",
            str(proto),
        ]
    )
    assert code == 0
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
        pool.Add(file)
    return pool


@pytest.fixture(scope="session")
def library(library_pool: descriptor_pool.DescriptorPool) -> ServiceDescriptor:
    return library_pool.FindServiceByName("openapitest.v1.LibraryService")


@pytest.fixture(scope="session")
def library_document(library: ServiceDescriptor) -> dict[str, Any]:
    return openapi_document(routes_of([library]), title="Library", version="1.2.3")


def parameters(operation: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p["schema"] for p in operation.get("parameters", []) if p["in"] == where}


def test_library_document_is_valid_openapi_3(library_document: dict[str, Any]) -> None:
    validate(library_document)


def test_every_binding_is_an_operation_with_a_unique_id(library_document: dict[str, Any]) -> None:
    operations = {
        (path, method): operation["operationId"]
        for path, item in library_document["paths"].items()
        for method, operation in item.items()
    }
    assert operations == {
        ("/v1/shelves/{shelfId}/books", "post"): "LibraryService_CreateBook",
        ("/v1/{name}", "patch"): "LibraryService_UpdateBook",
        ("/v1/books/{name}", "put"): "LibraryService_UpdateBook2",
        ("/v1/shelves/{shelfId}/books", "get"): "LibraryService_ListBooks",
        ("/v1/books", "get"): "LibraryService_ListBooks2",
        ("/v1/books:import", "post"): "LibraryService_ImportBooks",
    }
    assert library_document["tags"] == [{"name": "LibraryService"}]


def test_post_with_body_field_takes_the_rest_from_path_and_query(
    library_document: dict[str, Any],
) -> None:
    operation = library_document["paths"]["/v1/shelves/{shelfId}/books"]["post"]
    shelf_id = parameters(operation, "path")["shelfId"]
    assert shelf_id["type"] == "string"
    assert shelf_id["format"] == "int64"
    assert [p["required"] for p in operation["parameters"] if p["in"] == "path"] == [True]
    assert parameters(operation, "query") == {"requestId": {"type": "string"}}
    body = operation["requestBody"]
    assert body["required"] is True
    # Book is also a response: the request side gets its own schema, with nothing required.
    assert body["content"]["application/json"]["schema"] == component("openapitest.v1.Book-Input")
    assert ok_schema(library_document, "/v1/shelves/{shelfId}/books", "post") == component(
        "openapitest.v1.Book"
    )


def test_body_star_is_the_request_without_its_path_fields(
    library_document: dict[str, Any],
) -> None:
    patch = library_document["paths"]["/v1/{name}"]["patch"]
    assert parameters(patch, "path") == {
        "name": {"type": "string", "pattern": "^shelves/[^/]+/books/[^/]+$"}
    }
    assert parameters(patch, "query") == {}
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert "name" not in body["properties"]
    assert "title" in body["properties"]
    assert "required" not in body
    put = library_document["paths"]["/v1/books/{name}"]["put"]
    assert parameters(put, "path") == {"name": {"type": "string"}}
    # Nothing bound in the path: the body is the whole request message.
    imports = library_document["paths"]["/v1/books:import"]["post"]
    assert imports["requestBody"]["content"]["application/json"]["schema"] == component(
        "openapitest.v1.ImportBooksRequest"
    )
    assert "parameters" not in imports


def test_query_parameters_cover_the_remaining_scalar_fields(
    library_document: dict[str, Any],
) -> None:
    by_shelf = library_document["paths"]["/v1/shelves/{shelfId}/books"]["get"]
    query = parameters(by_shelf, "query")
    assert list(query) == [
        "filter.authorName",
        "filter.minPages",
        "filter.genre",
        "genres",
        "pageSize",
        "since",
        "ids",
    ]  # not: shelfId (path), exclude (repeated message), labels (map), extra, hint, filter.andAlso
    assert query["filter.minPages"]["type"] == "integer"
    assert query["filter.genre"] == component("openapitest.v1.Genre")
    assert query["genres"] == {"type": "array", "items": component("openapitest.v1.Genre")}
    assert query["since"] == {"type": "string", "format": "date-time"}
    assert query["ids"]["type"] == "array"
    assert query["ids"]["items"]["type"] == "string"
    assert query["ids"]["items"]["format"] == "uint64"
    assert all(p.get("required", False) is False for p in by_shelf["parameters"][1:])
    everywhere = library_document["paths"]["/v1/books"]["get"]
    assert list(parameters(everywhere, "query")) == ["shelfId", *query]


def test_response_body_documents_only_that_field(library_document: dict[str, Any]) -> None:
    assert ok_schema(library_document, "/v1/shelves/{shelfId}/books") == {
        "type": "array",
        "items": component("openapitest.v1.Book"),
    }
    # An additional binding has its own response_body (none here): the whole response.
    assert ok_schema(library_document, "/v1/books") == component("openapitest.v1.ListBooksResponse")


def test_message_schemas_follow_the_proto3_json_mapping(
    library_document: dict[str, Any],
) -> None:
    schemas = library_document["components"]["schemas"]
    book = schemas["openapitest.v1.Book"]["properties"]
    assert book["genre"] == component("openapitest.v1.Genre")
    assert schemas["openapitest.v1.Genre"] == {
        "type": "string",
        "enum": ["GENRE_UNSPECIFIED", "GENRE_FICTION", "GENRE_POETRY"],
    }
    assert book["pageCount"]["type"] == "string"
    assert book["pageCount"]["format"] == "int64"
    assert book["authors"] == {"type": "array", "items": {"type": "string"}}
    assert book["ratings"]["type"] == "object"
    assert book["ratings"]["additionalProperties"]["format"] == "int64"
    assert book["published"] == {"type": "string", "format": "date-time"}
    assert book["edition"]["type"] == "integer"
    assert book["cover"] == {"type": "string", "format": "byte"}
    assert book["price"] == {"type": "number", "format": "double"}
    assert book["sequels"] == {"type": "array", "items": component("openapitest.v1.Book")}
    assert book["shelf"] == component("openapitest.v1.Shelf")
    assert "yearPublished" in book  # the json_name option wins
    shelf = schemas["openapitest.v1.Shelf"]["properties"]
    assert shelf["neighbours"]["additionalProperties"] == component("openapitest.v1.Shelf")
    # Presence decides what a response always carries: not the message, not the optional.
    required = set(schemas["openapitest.v1.Book"]["required"])
    assert required == set(book) - {"published", "edition", "shelf"}
    # The request side refers to request-side schemas all the way down.
    book_input = schemas["openapitest.v1.Book-Input"]
    assert "required" not in book_input
    assert book_input["properties"]["sequels"]["items"] == component("openapitest.v1.Book-Input")
    assert book_input["properties"]["shelf"] == component("openapitest.v1.Shelf-Input")
    imported = schemas["openapitest.v1.ImportBooksResponse"]["properties"]
    assert imported["warnings"]["items"] == component("google.protobuf.Any")
    assert imported["note"] == {}
    options = schemas["openapitest.v1.ImportBooksRequest"]["properties"]["options"]
    assert options == {"type": "object", "additionalProperties": True}
    assert not any(name.startswith("openapitest.v1.ListBooksRequest") for name in schemas)
    assert "openapitest.v1.NotOverHttp" not in str(library_document)


def test_printed_messages_validate_against_their_schemas(
    library_pool: descriptor_pool.DescriptorPool, library_document: dict[str, Any]
) -> None:
    book_class = message_factory.GetMessageClass(
        library_pool.FindMessageTypeByName("openapitest.v1.Book")
    )
    full = book_class(
        name="shelves/1/books/2",
        title="Odes",
        genre=2,
        page_count=2**62,
        authors=["Keats"],
        ratings={"a": -(2**63)},
        edition=3,
        cover=b"\x00\xff",
        price=9.5,
        year=1819,
    )
    full.published.FromJsonString("1819-05-01T00:00:00Z")
    full.sequels.add(title="More odes")
    full.shelf.neighbours["left"].name = "shelves/0"
    schema = component("openapitest.v1.Book")
    for book in (full, book_class()):
        assert_valid(library_document, schema, as_json(book))
    response_class = message_factory.GetMessageClass(
        library_pool.FindMessageTypeByName("openapitest.v1.ListBooksResponse")
    )
    listing = response_class(books=[full, book_class()])
    assert_valid(
        library_document,
        ok_schema(library_document, "/v1/shelves/{shelfId}/books"),
        as_json(listing)["books"],
    )
    assert_valid(library_document, ok_schema(library_document, "/v1/books"), as_json(listing))


# --- the real server's JSON ---------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
async def test_real_responses_validate_against_the_document(stack: Stack) -> None:
    document = balances_document()
    wallet = await stack.stub.GetWalletBalance(
        pb.GetWalletBalanceRequest(wallet_id="wal_alice_polygon")
    )
    assert_valid(document, ok_schema(document, WALLET_PATH), as_json(wallet))
    empty_wallet = await stack.stub.GetWalletBalance(
        pb.GetWalletBalanceRequest(wallet_id="wal_bob_polygon")
    )
    assert_valid(document, ok_schema(document, WALLET_PATH), as_json(empty_wallet))
    customer = await stack.stub.GetCustomerBalances(
        pb.GetCustomerBalancesRequest(customer_id="cus_alice")
    )
    assert_valid(document, ok_schema(document, CUSTOMER_PATH), as_json(customer))


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
async def test_real_error_validates_against_the_error_schema(stack: Stack) -> None:
    document = balances_document()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id="wal_nobody"))
    body = {
        "code": caught.value.code().value[0],
        "message": caught.value.details(),
        "details": details_from_trailers(tuple(caught.value.trailing_metadata() or ())),
    }
    assert body["details"]  # ErrorInfo and ResourceInfo, each an Any
    assert_valid(document, error_schema(document, WALLET_PATH), body)
