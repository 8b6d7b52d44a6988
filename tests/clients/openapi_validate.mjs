// Validates an OpenAPI document against the OpenAPI 3 schema (and its $refs) with
// @apidevtools/swagger-parser. Usage: node openapi_validate.mjs URL
// Prints one JSON line: the version, title and paths of the valid document.
import SwaggerParser from "@apidevtools/swagger-parser";

const [url] = process.argv.slice(2);
const answer = await fetch(url);
const document = await answer.json();
const api = await SwaggerParser.validate(document);
console.log(JSON.stringify({ openapi: api.openapi, title: api.info.title, paths: Object.keys(api.paths) }));
