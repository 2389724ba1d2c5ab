// Compiled by `make clients` with `tsc --noEmit --strict`, next to the types that
// openapi-typescript (default options) generated from the running server's
// document (api.d.ts) and real bodies that server answered (samples.ts).
import type { components, paths } from "./api";
import { notFound, page } from "./samples";

type Schemas = components["schemas"];
type Todos = paths["/api/v1/todos"];

// A create body needs only its title: the other writable fields are optional.
const create: Todos["post"]["requestBody"]["content"]["application/json"] = { title: "Buy milk" };
const named: Schemas["TodoCreate"] = create;

// A list page, read with the query that produced it.
const query: NonNullable<Todos["get"]["parameters"]["query"]> = { sort: "-due_at", limit: 2 };
const listed: Todos["get"]["responses"][200]["content"]["application/json"] = page;
const titles: string[] = listed.items.map((todo) => todo.title);
const nextCursor: string | null = listed.next_cursor;
const firstDue: string | null = listed.items[0]?.due_at ?? null;

// A real 404 body is a Problem, as documented for GET /api/v1/todos/{todo_id}.
type GetTodo = paths["/api/v1/todos/{todo_id}"]["get"];
const problem: GetTodo["responses"][404]["content"]["application/problem+json"] = notFound;
const code: string = problem.code;
const fieldErrors: number = problem.errors?.length ?? 0;

export { named, query, titles, nextCursor, firstDue, code, fieldErrors };
