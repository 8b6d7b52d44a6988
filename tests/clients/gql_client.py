"""A third-party GraphQL client with its defaults, driven by tests/api/clients.rs.

Usage: gql_client.py WS_URL HTTP_URL
Runs a query over WebSocket with gql's default WebsocketsTransport (which offers both
subscription protocols), fetches the schema by introspection over HTTP, and prints one
JSON line with what it saw.
"""
import asyncio
import json
import sys

from gql import Client, gql
from gql.transport.requests import RequestsHTTPTransport
from gql.transport.websockets import WebsocketsTransport


async def over_websocket(url):
    transport = WebsocketsTransport(url=url)
    async with Client(transport=transport) as session:
        result = await session.execute(gql("{ users(limit: 1) { name } }"))
        return {"subprotocol": transport.subprotocol, "result": result}


def introspection_over_http(url):
    client = Client(transport=RequestsHTTPTransport(url=url), fetch_schema_from_transport=True)
    with client as session:
        session.fetch_schema()
        return sorted(t for t in client.schema.type_map if not t.startswith("__"))


def main():
    ws_url, http_url = sys.argv[1], sys.argv[2]
    seen = asyncio.run(over_websocket(ws_url))
    seen["types"] = introspection_over_http(http_url)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
