// A backend driving Switchboard's server API with grpc-js (the official Node.js gRPC
// client) and @grpc/proto-loader reading proto/chat_service.proto at run time.
// Usage: node grpc_chat_client.mjs HOST:PORT TOKEN ROOM
// Prints one JSON line: what Publish, Presence and History answered.
import { fileURLToPath } from "node:url";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const [address, token, room] = process.argv.slice(2);
const here = path.dirname(fileURLToPath(import.meta.url));
const definition = protoLoader.loadSync(path.join(here, "../../proto/chat_service.proto"), {
  keepCase: true,
  longs: Number,
  defaults: true,
});
const { ChatService } = grpc.loadPackageDefinition(definition).switchboard.chat.v1;
const client = new ChatService(address, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.set("authorization", `Bearer ${token}`);

const call = (method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, metadata, (error, answer) => (error ? reject(error) : resolve(answer))),
  );

try {
  const published = await call("Publish", {
    room,
    content: "from grpc-js",
    metadata: { via: "node" },
    idempotency_key: "js-1",
  });
  const retried = await call("Publish", { room, content: "from grpc-js", idempotency_key: "js-1" });
  const presence = await call("Presence", { room });
  const history = await call("History", { room, limit: 10 });
  let denied = null;
  try {
    await call("Publish", { room: "", content: "x" });
  } catch (error) {
    denied = error.code;
  }
  console.log(JSON.stringify({ published, retried, presence, history, invalid_code: denied }));
} finally {
  client.close();
}
