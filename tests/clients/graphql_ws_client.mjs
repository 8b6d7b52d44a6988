// npm's graphql-ws client (with graphql-js) against a running Switchboard, as a front-end
// would use them: the standard introspection query over HTTP, a query and a subscription
// over graphql-transport-ws with the token in connectionParams. Prints one JSON line.
//
// usage: node graphql_ws_client.mjs http://HOST:PORT TOKEN
import { createClient } from "graphql-ws";
import { buildClientSchema, getIntrospectionQuery } from "graphql";
import WebSocket from "ws";

const [base, token] = process.argv.slice(2);
const deadline = setTimeout(() => {
  console.error("timed out");
  process.exit(2);
}, 30_000);

async function graphql(query, variables) {
  const response = await fetch(`${base}/graphql`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      accept: "application/graphql-response+json",
      authorization: `Bearer ${token}`,
    },
    body: JSON.stringify({ query, variables }),
  });
  return { status: response.status, type: response.headers.get("content-type"), body: await response.json() };
}

// graphql-js's own introspection query, and its own schema builder over the answer.
const introspection = await graphql(getIntrospectionQuery());
if (!introspection.body.data) throw new Error(JSON.stringify(introspection.body));
const schema = buildClientSchema(introspection.body.data);

const client = createClient({
  url: `${base.replace(/^http/, "ws")}/subscriptions`,
  webSocketImpl: WebSocket,
  connectionParams: { Authorization: `Bearer ${token}` },
  retryAttempts: 0,
});

// A query over the WebSocket: one result, then complete.
let queried = null;
for await (const result of client.iterate({ query: "{ users(limit: 1) { id } }" })) {
  queried = result;
}

// A subscription: create users until one is announced (the subscription is live once the
// server has processed `subscribe`, which the client does not see, so keep creating).
const events = client.iterate({ query: "subscription { userCreated { name } }" });
let created = 0;
const creating = setInterval(() => {
  created += 1;
  graphql("mutation($i: UserInput!) { createUser(input: $i) { id } }", {
    i: { name: `Node ${created}`, email: `node${created}@example.com` },
  }).catch((error) => console.error(error));
}, 200);
const first = await events.next();
clearInterval(creating);
await events.return();
await client.dispose();
clearTimeout(deadline);

console.log(JSON.stringify({
  introspection_status: introspection.status,
  introspection_type: introspection.type,
  types: Object.keys(schema.getTypeMap()).filter((name) => !name.startsWith("__")),
  subscription_fields: Object.keys(schema.getSubscriptionType()?.getFields() ?? {}),
  queried,
  event: first.value,
}));
