// Switchboard's GraphQL console: an editor, variables, a bearer token, results, schema
// docs read by introspection, and subscriptions over graphql-transport-ws. Everything it
// needs is served by the server itself, so it works offline and under a strict CSP.
"use strict";

const HTTP_PATH = "/graphql";
const WS_PATH = "/subscriptions";
const STORE = window.localStorage;
const EXAMPLE = "# Ctrl+Enter runs the selected operation.\n" +
  "query Users {\n  users(limit: 5) {\n    id\n    name\n    email\n  }\n}\n";

const $ = (id) => document.getElementById(id);
const els = {
  query: $("query"), variables: $("variables"), token: $("token"), run: $("run"),
  stop: $("stop"), result: $("result"), status: $("status"), operation: $("operation"),
  docs: $("docs"), search: $("docs-search"), home: $("docs-home"),
};

let socket = null; // the running subscription's WebSocket
let schema = null; // introspection result: { types: Map, queryType, mutationType, subscriptionType }

// ---- operations in the document ------------------------------------------------------

// The document's top-level operations, as [{ kind, name }]: a small scanner that skips
// strings, block strings and comments and reads only what sits outside braces and
// parentheses. It only fills the operation picker; the server parses the document.
function operations(text) {
  const found = [];
  let depth = 0;
  let i = 0;
  let parens = 0; // inside variable definitions
  let pendingDefinition = false; // a definition keyword was read; its `{` opens it
  const word = /[_A-Za-z][_0-9A-Za-z]*/y;
  while (i < text.length) {
    const c = text[i];
    if (c === "#") { while (i < text.length && text[i] !== "\n") i++; continue; }
    if (text.startsWith('"""', i)) { const end = text.indexOf('"""', i + 3); i = end < 0 ? text.length : end + 3; continue; }
    if (c === '"') { i++; while (i < text.length && text[i] !== '"' && text[i] !== "\n") i += text[i] === "\\" ? 2 : 1; i++; continue; }
    if (c === "{") { if (depth === 0 && !pendingDefinition) found.push({ kind: "query", name: null }); pendingDefinition = false; depth++; i++; continue; }
    if (c === "}") { depth = Math.max(0, depth - 1); i++; continue; }
    if (c === "(") { parens++; i++; continue; }
    if (c === ")") { parens = Math.max(0, parens - 1); i++; continue; }
    if (depth === 0 && parens === 0) {
      word.lastIndex = i;
      const m = word.exec(text);
      if (m) {
        i += m[0].length;
        if (["query", "mutation", "subscription"].includes(m[0])) {
          const rest = text.slice(i).match(/^\s*([_A-Za-z][_0-9A-Za-z]*)?/);
          found.push({ kind: m[0], name: rest && rest[1] ? rest[1] : null });
          pendingDefinition = true;
        } else if (m[0] === "fragment") {
          pendingDefinition = true;
        }
        continue;
      }
    }
    i++;
  }
  return found;
}

function refreshOperations() {
  const ops = operations(els.query.value);
  const previous = els.operation.value;
  els.operation.replaceChildren(...ops.map((op, index) => {
    const option = document.createElement("option");
    option.value = String(index);
    option.textContent = `${op.kind} ${op.name || "(anonymous)"}`;
    return option;
  }));
  if (previous && Number(previous) < ops.length) els.operation.value = previous;
  els.operation.disabled = ops.length < 2;
  return ops;
}

// ---- running ---------------------------------------------------------------------------

function setStatus(text, isError) {
  els.status.textContent = text;
  els.status.classList.toggle("error", Boolean(isError));
}

function show(value, isError) {
  els.result.textContent = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  els.result.classList.toggle("error", Boolean(isError));
}

function authorization() {
  const token = els.token.value.trim();
  if (!token) return null;
  return /^bearer\s/i.test(token) ? token : `Bearer ${token}`;
}

function readVariables() {
  const text = els.variables.value.trim();
  if (!text) return {};
  const value = JSON.parse(text);
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error("variables must be a JSON object");
  }
  return value;
}

async function run() {
  const ops = refreshOperations();
  if (ops.length === 0) { show("The document has no operation to run.", true); return; }
  const op = ops[Number(els.operation.value || 0)] || ops[0];
  let variables;
  try { variables = readVariables(); } catch (e) { show(`Variables: ${e.message}`, true); return; }
  const request = { query: els.query.value, variables };
  if (op.name) request.operationName = op.name;
  stopSubscription();
  if (op.kind === "subscription") { subscribe(request); return; }
  setStatus("running…");
  const headers = { "content-type": "application/json",
    accept: "application/graphql-response+json, application/json" };
  const auth = authorization();
  if (auth) headers.authorization = auth;
  const started = performance.now();
  try {
    const response = await fetch(HTTP_PATH, { method: "POST", headers, body: JSON.stringify(request) });
    const text = await response.text();
    let body;
    try { body = JSON.parse(text); } catch { body = text; }
    const ms = Math.round(performance.now() - started);
    const failed = !response.ok || (body && body.errors && !body.data);
    setStatus(`${response.status} ${response.statusText} · ${ms} ms`, failed);
    show(body, failed);
  } catch (e) {
    setStatus("request failed", true);
    show(`The request failed: ${e.message}`, true);
  }
}

// Runs a subscription over graphql-transport-ws and appends each event to the results.
function subscribe(request) {
  const url = new URL(WS_PATH, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url, "graphql-transport-ws");
  socket = ws;
  const events = [];
  els.stop.disabled = false;
  setStatus("connecting…");
  show("");
  ws.onopen = () => {
    const auth = authorization();
    ws.send(JSON.stringify({ type: "connection_init", payload: auth ? { Authorization: auth } : {} }));
  };
  ws.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch { return; }
    switch (message.type) {
      case "connection_ack":
        ws.send(JSON.stringify({ id: "1", type: "subscribe", payload: request }));
        setStatus("subscribed; waiting for events");
        break;
      case "ping":
        ws.send(JSON.stringify({ type: "pong" }));
        break;
      case "next":
        events.push(message.payload);
        setStatus(`subscribed · ${events.length} event${events.length === 1 ? "" : "s"}`);
        show(events.map((e) => JSON.stringify(e, null, 2)).join("\n"));
        break;
      case "error":
        setStatus("the subscription was refused", true);
        show({ errors: message.payload }, true);
        break;
      case "complete":
        setStatus("the subscription completed");
        break;
    }
  };
  ws.onclose = (event) => {
    if (socket === ws) socket = null;
    els.stop.disabled = true;
    if (event.code !== 1000 && event.code !== 1005) {
      setStatus(`closed: ${event.code} ${event.reason || ""}`.trim(), true);
    } else if (!els.status.classList.contains("error")) {
      setStatus(`closed after ${events.length} event${events.length === 1 ? "" : "s"}`);
    }
  };
}

function stopSubscription() {
  if (!socket) return;
  const ws = socket;
  socket = null;
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ id: "1", type: "complete" }));
  ws.close(1000, "stopped");
  els.stop.disabled = true;
  setStatus("stopped");
}

// ---- docs --------------------------------------------------------------------------------

const TYPE_REF = "kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } }";
const INTROSPECTION = `query ConsoleIntrospection {
  __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types {
      kind name description
      fields(includeDeprecated: true) {
        name description isDeprecated deprecationReason
        args { name description defaultValue type { ${TYPE_REF} } }
        type { ${TYPE_REF} }
      }
      inputFields { name description defaultValue type { ${TYPE_REF} } }
      interfaces { name }
      enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
      possibleTypes { name }
    }
  }
}`;

async function loadSchema() {
  try {
    const response = await fetch(HTTP_PATH, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({ query: INTROSPECTION, operationName: "ConsoleIntrospection" }),
    });
    const body = await response.json();
    if (!body.data) throw new Error((body.errors || []).map((e) => e.message).join("; ") || response.statusText);
    const s = body.data.__schema;
    schema = {
      types: new Map(s.types.map((t) => [t.name, t])),
      roots: [s.queryType, s.mutationType, s.subscriptionType].filter(Boolean).map((t) => t.name),
    };
    showIndex();
  } catch (e) {
    els.docs.textContent = `The schema could not be loaded: ${e.message}`;
  }
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function typeLink(name) {
  const button = el("button", name, "type");
  button.type = "button";
  button.addEventListener("click", () => showType(name));
  return button;
}

// A type reference ([User!]!) with the named type as a link.
function typeRef(ref) {
  const span = el("span");
  const walk = (r) => {
    if (r.kind === "NON_NULL") { walk(r.ofType); span.append("!"); }
    else if (r.kind === "LIST") { span.append("["); walk(r.ofType); span.append("]"); }
    else span.append(typeLink(r.name));
  };
  walk(ref);
  return span;
}

function fieldItem(field) {
  const li = el("li");
  const sig = el("div", null, "field");
  const name = el("span", field.name, field.isDeprecated ? "deprecated" : null);
  sig.append(name);
  if (field.args && field.args.length) {
    sig.append("(");
    field.args.forEach((arg, i) => {
      if (i) sig.append(", ");
      sig.append(`${arg.name}: `, typeRef(arg.type));
      if (arg.defaultValue !== null && arg.defaultValue !== undefined) sig.append(` = ${arg.defaultValue}`);
    });
    sig.append(")");
  }
  sig.append(": ", typeRef(field.type));
  li.append(sig);
  if (field.description) li.append(el("p", field.description));
  if (field.isDeprecated) li.append(el("p", `Deprecated: ${field.deprecationReason || "no reason given"}`));
  return li;
}

function section(title, items) {
  if (!items || !items.length) return [];
  const ul = el("ul");
  ul.append(...items);
  return [el("h3", title), ul];
}

function showIndex() {
  if (!schema) return;
  const query = els.search.value.trim().toLowerCase();
  const nodes = [];
  if (!query) {
    nodes.push(el("h2", "Schema"), ...section("Root types", schema.roots.map((n) => {
      const li = el("li"); li.append(typeLink(n)); return li;
    })));
  }
  const visible = [...schema.types.values()].filter((t) => !t.name.startsWith("__"));
  const types = visible.filter((t) => !query || t.name.toLowerCase().includes(query));
  nodes.push(...section(query ? "Matching types" : "All types", types.map((t) => {
    const li = el("li"); li.append(typeLink(t.name), el("span", ` ${t.kind.toLowerCase()}`)); return li;
  })));
  if (query) {
    const fields = [];
    for (const t of visible) {
      for (const f of t.fields || []) {
        if (f.name.toLowerCase().includes(query)) {
          const li = el("li"); li.append(typeLink(t.name), `.${f.name}`); fields.push(li);
        }
      }
    }
    nodes.push(...section("Matching fields", fields));
    if (!types.length && !fields.length) nodes.push(el("p", `Nothing matches “${els.search.value}”.`));
  }
  els.docs.replaceChildren(...nodes);
}

function showType(name) {
  const type = schema && schema.types.get(name);
  if (!type) return;
  const nodes = [el("h2", type.name), el("p", type.kind.toLowerCase())];
  if (type.description) nodes.push(el("p", type.description));
  nodes.push(...section("Fields", (type.fields || []).map(fieldItem)));
  nodes.push(...section("Input fields", (type.inputFields || []).map(fieldItem)));
  nodes.push(...section("Values", (type.enumValues || []).map((v) => {
    const li = el("li"); li.append(el("span", v.name, v.isDeprecated ? "field deprecated" : "field"));
    if (v.description) li.append(el("p", v.description));
    return li;
  })));
  nodes.push(...section("Implements", (type.interfaces || []).map((i) => { const li = el("li"); li.append(typeLink(i.name)); return li; })));
  nodes.push(...section("Possible types", (type.possibleTypes || []).map((i) => { const li = el("li"); li.append(typeLink(i.name)); return li; })));
  els.docs.replaceChildren(...nodes);
  els.docs.scrollTop = 0;
}

// ---- wiring --------------------------------------------------------------------------------

function persist() {
  STORE.setItem("switchboard.console.query", els.query.value);
  STORE.setItem("switchboard.console.variables", els.variables.value);
}

els.query.value = STORE.getItem("switchboard.console.query") || EXAMPLE;
els.variables.value = STORE.getItem("switchboard.console.variables") || "";
// The token stays for this tab only.
els.token.value = window.sessionStorage.getItem("switchboard.console.token") || "";
refreshOperations();

els.query.addEventListener("input", () => { refreshOperations(); persist(); });
els.variables.addEventListener("input", persist);
els.token.addEventListener("input", () => window.sessionStorage.setItem("switchboard.console.token", els.token.value));
els.run.addEventListener("click", run);
els.stop.addEventListener("click", stopSubscription);
els.search.addEventListener("input", showIndex);
els.home.addEventListener("click", () => { els.search.value = ""; showIndex(); });
for (const area of [els.query, els.variables]) {
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); run(); }
    if (event.key === "Tab" && !event.shiftKey) {
      event.preventDefault();
      area.setRangeText("  ", area.selectionStart, area.selectionEnd, "end");
    }
  });
}
loadSchema();
