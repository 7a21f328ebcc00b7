/** The gateway's API through Connect-Web on the page's own origin, with the API key the user signed in with. */
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { GatewayService } from "@ragtune/proto";

const KEY = "ragtune.apiKey";

export const session = {
  key: (): string => sessionStorage.getItem(KEY) ?? "",
  set: (key: string): void => sessionStorage.setItem(KEY, key),
  clear: (): void => sessionStorage.removeItem(KEY),
};

const withKey: Interceptor = (next) => (req) => {
  const key = session.key();
  if (key !== "") req.header.set("authorization", `Bearer ${key}`);
  return next(req);
};

export const gateway = createClient(GatewayService, createConnectTransport({ baseUrl: location.origin, interceptors: [withKey] }));

/** A user-facing message for a failed call. */
export function errorText(err: unknown): string {
  const e = ConnectError.from(err);
  return `${Code[e.code] ?? e.code}: ${e.rawMessage}`;
}

export const isUnauthenticated = (err: unknown) => ConnectError.from(err).code === Code.Unauthenticated;
export const isAborted = (err: unknown) => ConnectError.from(err).code === Code.Canceled;

export function when(t: Timestamp | undefined): string {
  return t === undefined ? "–" : timestampDate(t).toISOString().replace("T", " ").slice(0, 19);
}

/** Every page of a paged listing (the dashboard's lists are small: a collection's runs, a version's examples). */
export async function allPages<T>(fetchPage: (pageToken: string) => Promise<{ items: T[]; next: string }>, limit = 5000): Promise<T[]> {
  const out: T[] = [];
  let token = "";
  do {
    const page = await fetchPage(token);
    out.push(...page.items);
    token = page.next;
  } while (token !== "" && out.length < limit);
  return out;
}
