/** The dashboard's shell: sign-in with an API key, hash routes, one page at a time (its streams end on navigation). */
import "./style.css";
import { errorText, gateway, isUnauthenticated, session } from "./api.js";
import { fill, h, link } from "./dom.js";
import { collectionPage, collectionsPage, documentPage } from "./pages-collections.js";
import { datasetVersionPage } from "./pages-dataset.js";
import { evalRunPage } from "./pages-eval.js";
import { ingestRunPage } from "./pages-ingest.js";
import { jobPage } from "./pages-jobs.js";
import { lineagePage } from "./pages-lineage.js";
import { pipelineRunPage, pipelinesPage } from "./pages-pipeline.js";

export interface PageContext {
  root: HTMLElement;
  signal: AbortSignal;
}

type Page = (ctx: PageContext, ...params: string[]) => Promise<void>;

const routes: [RegExp, Page][] = [
  [/^\/$/, collectionsPage],
  [/^\/c\/([^/]+)$/, collectionPage],
  [/^\/c\/([^/]+)\/pipelines$/, pipelinesPage],
  [/^\/doc\/([^/]+)$/, documentPage],
  [/^\/dataset\/([^/]+)$/, datasetVersionPage],
  [/^\/job\/([^/]+)$/, jobPage],
  [/^\/eval\/([^/]+)$/, evalRunPage],
  [/^\/pipeline\/([^/]+)$/, pipelineRunPage],
  [/^\/ingest\/([^/]+)$/, ingestRunPage],
  [/^\/lineage\/([^/]+)$/, lineagePage],
];

const app = document.getElementById("app")!;
let current: AbortController | undefined;

function loginPage(message = ""): void {
  const input = h("input", { id: "api-key", type: "password", placeholder: "rt_…", autocomplete: "off", size: 70 });
  const status = h("p", { id: "login-error", class: "error", role: "alert" }, message);
  const form = h(
    "form",
    {
      id: "login",
      onsubmit: (ev: Event) => {
        ev.preventDefault();
        void signIn(input.value.trim(), status);
      },
    },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste a gateway API key (", h("code", {}, "npm run -w @ragtune/gateway-service keys -- create --tenant …"), ")."),
    h("label", { for: "api-key" }, "API key "),
    input,
    " ",
    h("button", { type: "submit", id: "sign-in" }, "Sign in"),
    status,
  );
  fill(app, form);
  fill(document.getElementById("who")!);
  fill(document.getElementById("nav")!);
  input.focus();
}

async function signIn(key: string, status: HTMLElement): Promise<void> {
  if (key === "") {
    status.textContent = "Enter an API key.";
    return;
  }
  session.set(key);
  status.textContent = "Checking the key…";
  try {
    await gateway.listTenantCollections({});
    location.hash = "#/";
    void route();
  } catch (err) {
    session.clear();
    status.textContent = `The gateway refused the key — ${errorText(err)}`;
  }
}

async function route(): Promise<void> {
  current?.abort();
  const controller = new AbortController();
  current = controller;
  if (session.key() === "") return loginPage();
  const path = decodeURI(location.hash.replace(/^#/, "") || "/");
  fill(document.getElementById("who")!, h("button", { id: "sign-out", onclick: () => (session.clear(), loginPage()) }, "Sign out"));
  fill(document.getElementById("nav")!, link("#/", "Collections"));
  for (const [re, page] of routes) {
    const m = re.exec(path);
    if (m === null) continue;
    const root = h("div", { class: "page" });
    fill(app, root);
    try {
      await page({ root, signal: controller.signal }, ...m.slice(1).map(decodeURIComponent));
    } catch (err) {
      if (controller.signal.aborted) return;
      if (isUnauthenticated(err)) {
        session.clear();
        return loginPage(`Signed out — ${errorText(err)}`);
      }
      root.append(h("p", { class: "error", role: "alert" }, errorText(err)));
    }
    return;
  }
  fill(app, h("p", { class: "error" }, `No page at ${path}. `, link("#/", "Collections")));
}

window.addEventListener("hashchange", () => void route());
void route();
