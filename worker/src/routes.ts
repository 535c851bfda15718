/** The paths of docs/protocol.md §4 and the methods each accepts. */

export type RunVerb = "start" | "claim" | "commit" | "attempts" | "fail" | "resume" | "cancel" | "reconcile" | "ops";

const RUN_VERBS: readonly RunVerb[] = [
  "start",
  "claim",
  "commit",
  "attempts",
  "fail",
  "resume",
  "cancel",
  "reconcile",
  "ops",
];

/** A path segment, percent-decoded; null when its encoding is malformed. */
type Segment = string | null;

export type Route =
  | { name: "health" }
  | { name: "list" }
  | { name: "batch" }
  | { name: "run"; runId: Segment; verb: RunVerb | "get" }
  | { name: "hook"; runId: Segment; nodeId: Segment; token: Segment };

export interface RouteMatch {
  route: Route;
  methods: readonly string[];
  /** Webhooks carry their own credential (the token in the path) instead of the bearer secret. */
  bearer: boolean;
}

function decode(segment: string): Segment {
  try {
    return decodeURIComponent(segment);
  } catch {
    return null;
  }
}

const GET = ["GET"] as const;
const POST = ["POST"] as const;

export function matchRoute(pathname: string): RouteMatch | null {
  const parts = pathname.split("/");
  if (parts[0] !== "" || parts[1] !== "v1") {
    return null;
  }
  const rest = parts.slice(2);
  const [first, second, third, fourth] = rest;
  if (rest.length === 1 && first === "health") {
    return { route: { name: "health" }, methods: GET, bearer: true };
  }
  if (rest.length === 1 && first === "batch") {
    return { route: { name: "batch" }, methods: POST, bearer: true };
  }
  if (first === "runs" && second !== undefined) {
    if (rest.length === 2) {
      return second === ""
        ? null
        : { route: { name: "run", runId: decode(second), verb: "get" }, methods: GET, bearer: true };
    }
    const verb = RUN_VERBS.find((name) => name === third);
    if (rest.length === 3 && verb !== undefined && second !== "") {
      return { route: { name: "run", runId: decode(second), verb }, methods: POST, bearer: true };
    }
    return null;
  }
  if (rest.length === 1 && first === "runs") {
    return { route: { name: "list" }, methods: GET, bearer: true };
  }
  if (rest.length === 4 && first === "hooks" && second && third && fourth) {
    return {
      route: { name: "hook", runId: decode(second), nodeId: decode(third), token: decode(fourth) },
      methods: POST,
      bearer: false,
    };
  }
  return null;
}
