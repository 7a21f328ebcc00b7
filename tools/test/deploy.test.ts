import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { baseServiceSchema } from "@ragtune/config";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { datasetConfigSchema } from "../../services/dataset/src/config.js";
import { evalConfigSchema } from "../../services/eval/src/config.js";
import { gatewayConfigSchema } from "../../services/gateway/src/config.js";
import { ingestConfigSchema } from "../../services/ingest/src/config.js";
import { trainerConfigSchema } from "../../services/trainer/src/config.js";
import { SERVICE_NAMES, type ServiceName } from "../src/stack.js";

// Static checks of deploy/: the Kubernetes manifests agree with the services (ports, gRPC health probes,
// the environment variables each service's config schema knows), the overlays do what they say, and the
// Dockerfiles copy files that exist. Where kubectl is installed, its built-in kustomize renders every
// overlay and the same checks run on the result.

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const DEPLOY = join(ROOT, "deploy");
const K8S = join(DEPLOY, "k8s");
const BASE = join(K8S, "base");
const OVERLAYS = ["dev", "prod-l4"] as const;
/** The trainer's hyperparameter contract (services/trainer/src/hyperparameters.ts and the worker read it). */
const HYPERPARAMETER_CONTRACT = "services/trainer/worker/ragtune_worker/hyperparameters.json";
/** The one shared volume (one Filestore share in prod-l4): models/, models/adapters/ and datasets/ as subPaths. */
const DATA_CLAIM = "ragtune-data";
/** npm packages only tests and benchmarks use: never in a production image. */
const TEST_ONLY_NPM = ["@ragtune/testing", "vitest", "tokenizers"];

/** Variables that deliberately read a secret key of another name: a client's token is the server's RPC token. */
const SECRET_KEY_OF: Readonly<Record<string, string>> = { DATASET_INGEST_AUTH_TOKEN: "RPC_AUTH_TOKEN", EVAL_DATASET_AUTH_TOKEN: "RPC_AUTH_TOKEN", GATEWAY_UPSTREAM_AUTH_TOKEN: "RPC_AUTH_TOKEN" };

function contractMaxRank(): number {
  const contract = JSON.parse(readFileSync(join(ROOT, HYPERPARAMETER_CONTRACT), "utf8")) as unknown;
  const max = get(contract, "hyperparameters", "rank", "max");
  if (typeof max !== "number" || !Number.isInteger(max)) throw new Error(`${HYPERPARAMETER_CONTRACT}: no integer hyperparameters.rank.max`);
  return max;
}

/** Variables each service's config schema knows: a Deployment that sets any other is a typo. */
const KNOWN_ENV: Record<ServiceName, Set<string>> = {
  ingest: new Set(Object.keys(ingestConfigSchema.shape)),
  dataset: new Set(Object.keys(datasetConfigSchema.shape)),
  trainer: new Set(Object.keys(trainerConfigSchema.shape)),
  eval: new Set(Object.keys(evalConfigSchema.shape)),
  gateway: new Set(Object.keys(gatewayConfigSchema.shape)),
};
const BASE_ENV = new Set(Object.keys(baseServiceSchema.shape));
/** The schemas themselves: the environment a Deployment gives must load (required variables set, values valid). */
const SCHEMAS: Record<ServiceName, { safeParse(env: unknown): { success: boolean; error?: { issues: { path: PropertyKey[]; message: string }[] } } }> = {
  ingest: ingestConfigSchema,
  dataset: datasetConfigSchema,
  trainer: trainerConfigSchema,
  eval: evalConfigSchema,
  gateway: gatewayConfigSchema,
};
/** What a secretKeyRef or fieldRef stands for when the environment is parsed (a Secret's value is unknown here). */
const FROM_CLUSTER = "value-from-the-cluster-0123456789";

// ---------------------------------------------------------------------------------------------------------
// Loading

type Obj = Record<string, unknown>;
interface Resource extends Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: Obj;
}

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function get(v: unknown, ...path: (string | number)[]): unknown {
  let cur = v;
  for (const key of path) {
    if (Array.isArray(cur) && typeof key === "number") cur = cur[key];
    else if (isObj(cur) && typeof key === "string") cur = cur[key];
    else return undefined;
  }
  return cur;
}

function list(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

/**
 * Every vLLM `--max-lora-rank` value in a document: in an args/command list (`--max-lora-rank=N` or
 * `--max-lora-rank`, `N`) or inside a shell command string.
 */
function maxLoraRanks(doc: unknown): string[] {
  const found: string[] = [];
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) {
      const words = v.filter((x): x is string => typeof x === "string").join(" ");
      for (const m of words.matchAll(/--max-lora-rank(?:=|\s+)(\S*)/g)) found.push(m[1]!);
      for (const x of v) if (typeof x !== "string") walk(x);
    } else if (isObj(v)) {
      for (const x of Object.values(v)) walk(x);
    } else if (typeof v === "string") {
      for (const m of v.matchAll(/--max-lora-rank(?:=|\s+)(\S*)/g)) found.push(m[1]!);
    }
  };
  walk(doc);
  return found;
}

function filesUnder(dir: string, ext: RegExp): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return filesUnder(path, ext);
    return ext.test(e.name) ? [path] : [];
  });
}

/** Every YAML document of a file, failing with the file name and the parser's message. */
function loadYaml(file: string): unknown[] {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  if (!Array.isArray(docs)) return [];
  for (const doc of docs) {
    if (doc.errors.length > 0) throw new Error(`${relative(ROOT, file)}: ${doc.errors[0]!.message}`);
  }
  return docs.map((d) => d.toJS() as unknown).filter((d) => d !== null && d !== undefined);
}

function asResources(docs: unknown[], where: string): Resource[] {
  return docs.map((d) => {
    const name = get(d, "metadata", "name");
    if (!isObj(d) || typeof d.apiVersion !== "string" || typeof d.kind !== "string" || typeof name !== "string") {
      throw new Error(`${where}: a document without apiVersion, kind and metadata.name`);
    }
    return d as Resource;
  });
}

/** KEY=VALUE lines of a kustomize env file (comments and blank lines skipped). */
function readEnvFile(file: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const trimmed = line.trim();
    if (trimmed === "" || trimmed.startsWith("#")) continue;
    const eq = trimmed.indexOf("=");
    if (eq <= 0) throw new Error(`${relative(ROOT, file)}: "${trimmed}" is not KEY=VALUE`);
    out[trimmed.slice(0, eq)] = trimmed.slice(eq + 1);
  }
  return out;
}

interface Kustomization {
  dir: string;
  resources: string[];
  patches: { path?: string }[];
  configMapGenerator: { name: string; behavior?: string; envs?: string[]; literals?: string[]; files?: string[] }[];
  secretGenerator: { name: string; envs?: string[]; literals?: string[]; files?: string[] }[];
  replicas: { name: string; count: number }[];
  images: { name: string; newName?: string; newTag?: string }[];
}

function readKustomization(dir: string): Kustomization {
  const [doc] = loadYaml(join(dir, "kustomization.yaml"));
  if (!isObj(doc)) throw new Error(`${relative(ROOT, dir)}/kustomization.yaml is empty`);
  return {
    dir,
    resources: list(doc.resources) as string[],
    patches: list(doc.patches) as Kustomization["patches"],
    configMapGenerator: list(doc.configMapGenerator) as Kustomization["configMapGenerator"],
    secretGenerator: list(doc.secretGenerator) as Kustomization["secretGenerator"],
    replicas: list(doc.replicas) as Kustomization["replicas"],
    images: list(doc.images) as Kustomization["images"],
  };
}

/** The data a generator produces (envs files and literals). */
function generatorData(k: Kustomization, g: { envs?: string[]; literals?: string[] }): Record<string, string> {
  const data: Record<string, string> = {};
  for (const env of g.envs ?? []) Object.assign(data, readEnvFile(join(k.dir, env)));
  for (const literal of g.literals ?? []) {
    const eq = literal.indexOf("=");
    data[literal.slice(0, eq)] = literal.slice(eq + 1);
  }
  return data;
}

/** The base's resources as written (ConfigMaps from its generators, under their unhashed names). */
function loadBase(): { resources: Resource[]; configMaps: Map<string, Record<string, string>> } {
  const k = readKustomization(BASE);
  const resources = k.resources.flatMap((r) => asResources(loadYaml(join(BASE, r)), r));
  const configMaps = new Map(k.configMapGenerator.map((g) => [g.name, generatorData(k, g)] as const));
  return { resources, configMaps };
}

// ---------------------------------------------------------------------------------------------------------
// Checks shared by the base as written and the rendered overlays

function find(resources: Resource[], kind: string, name: string): Resource | undefined {
  return resources.find((r) => r.kind === kind && r.metadata.name === name);
}

function durationSeconds(value: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value.trim());
  if (!m) throw new Error(`not a duration: ${value}`);
  return (Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[(m[2] ?? "ms") as "ms" | "s" | "m" | "h"]);
}

interface ServiceFacts {
  env: Record<string, string | undefined>;
  containerPort: number;
  container: Obj;
  podSpec: Obj;
}

/** Checks one ragtune service's Deployment and Service; returns what other checks need. */
function checkService(
  resources: Resource[],
  configMaps: Map<string, Record<string, string>>,
  name: ServiceName,
  problems: string[],
): ServiceFacts | undefined {
  const deployment = find(resources, "Deployment", name);
  const service = find(resources, "Service", name);
  if (!deployment) problems.push(`${name}: no Deployment`);
  if (!service) problems.push(`${name}: no Service`);
  if (!deployment || !service) return undefined;

  const podSpec = get(deployment, "spec", "template", "spec") as Obj;
  const podLabels = (get(deployment, "spec", "template", "metadata", "labels") ?? {}) as Record<string, string>;
  const container = list(podSpec.containers).find((c) => get(c, "name") === name) as Obj | undefined;
  if (!container) {
    problems.push(`${name}: the Deployment has no container named ${name}`);
    return undefined;
  }
  const image = String(container.image ?? "");
  if (!image.startsWith(`ragtune/${name}:`) && !image.includes(`/ragtune/${name}:`)) {
    problems.push(`${name}: container image ${image} is not the ragtune/${name} image`);
  }

  // Environment: every variable set directly or through a ConfigMap is one the schema knows.
  const env: Record<string, string | undefined> = {};
  for (const from of list(container.envFrom)) {
    const cmName = get(from, "configMapRef", "name");
    if (typeof cmName === "string") {
      const data = configMaps.get(cmName);
      if (!data) problems.push(`${name}: envFrom names ConfigMap ${cmName}, which does not exist`);
      Object.assign(env, data ?? {});
    } else {
      problems.push(`${name}: envFrom other than a configMapRef (${JSON.stringify(from)}) cannot be checked`);
    }
  }
  for (const e of list(container.env)) {
    const key = String(get(e, "name"));
    env[key] = get(e, "value") as string | undefined;
    const secretKey = get(e, "valueFrom", "secretKeyRef", "key");
    if (secretKey !== undefined && secretKey !== key && SECRET_KEY_OF[key] !== secretKey) problems.push(`${name}: env ${key} reads secret key ${String(secretKey)}`);
  }
  for (const key of Object.keys(env)) {
    if (!KNOWN_ENV[name].has(key)) problems.push(`${name}: sets ${key}, which services/${name}/src/config.ts does not know`);
  }
  // The service starts with this environment: its schema accepts it (every required variable is set).
  const parsed = SCHEMAS[name].safeParse(Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v ?? FROM_CLUSTER])));
  if (!parsed.success) {
    for (const issue of parsed.error?.issues ?? []) problems.push(`${name}: config does not load: ${issue.path.map(String).join(".")}: ${issue.message}`);
  }
  if (!("RPC_AUTH_TOKEN" in env)) problems.push(`${name}: no RPC_AUTH_TOKEN (from the ragtune-rpc-auth Secret)`);

  // Port: the container port named grpc is RPC_PORT, and the server must listen on all interfaces.
  const port = list(container.ports).find((p) => get(p, "name") === "grpc");
  const containerPort = Number(get(port, "containerPort"));
  if (!port) problems.push(`${name}: no container port named grpc`);
  if (String(containerPort) !== env.RPC_PORT) {
    problems.push(`${name}: container port ${containerPort} but RPC_PORT=${env.RPC_PORT}`);
  }
  if (env.RPC_HOST !== "0.0.0.0") problems.push(`${name}: RPC_HOST=${env.RPC_HOST}; probes and Services need 0.0.0.0`);

  // Probes: native gRPC (grpc.health.v1) on the RPC port.
  for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
    const grpcPort = get(container, probe, "grpc", "port");
    if (grpcPort !== containerPort) {
      problems.push(`${name}: ${probe} is not a gRPC probe on port ${containerPort} (${JSON.stringify(container[probe])})`);
    }
  }

  // Service: selects this Deployment's pods; its port reaches the container port.
  const selector = (get(service, "spec", "selector") ?? {}) as Record<string, string>;
  if (Object.keys(selector).length === 0 || Object.entries(selector).some(([k, v]) => podLabels[k] !== v)) {
    problems.push(`${name}: Service selector ${JSON.stringify(selector)} does not match the pod labels`);
  }
  const svcPort = list(get(service, "spec", "ports")).find((p) => get(p, "name") === "grpc");
  if (!svcPort) problems.push(`${name}: Service has no port named grpc`);
  const target = get(svcPort, "targetPort") ?? get(svcPort, "port");
  const targetNumber = typeof target === "string" ? Number(get(list(container.ports).find((p) => get(p, "name") === target), "containerPort")) : target;
  if (targetNumber !== containerPort) {
    problems.push(`${name}: Service targetPort ${String(target)} does not reach container port ${containerPort}`);
  }

  // Metrics: scraped from the RPC port.
  const annotations = (get(deployment, "spec", "template", "metadata", "annotations") ?? {}) as Record<string, string>;
  if (annotations["prometheus.io/scrape"] !== "true" || annotations["prometheus.io/port"] !== String(containerPort)) {
    problems.push(`${name}: pod annotations do not have Prometheus scrape /metrics on port ${containerPort}`);
  }

  // Shutdown: Kubernetes waits longer than the service's own drain.
  const grace = Number(podSpec.terminationGracePeriodSeconds ?? 30);
  const shutdown = durationSeconds(env.SHUTDOWN_TIMEOUT ?? "30s");
  if (!(grace > shutdown)) problems.push(`${name}: terminationGracePeriodSeconds ${grace} is not above SHUTDOWN_TIMEOUT ${shutdown}s`);

  // Hardening.
  if (get(podSpec, "securityContext", "runAsNonRoot") !== true) problems.push(`${name}: pod not runAsNonRoot`);
  if (get(container, "securityContext", "allowPrivilegeEscalation") !== false) problems.push(`${name}: privilege escalation allowed`);
  if (get(container, "securityContext", "readOnlyRootFilesystem") !== true) problems.push(`${name}: root file system writable`);
  if (!list(get(container, "securityContext", "capabilities", "drop")).includes("ALL")) problems.push(`${name}: capabilities not dropped`);
  if (get(container, "resources", "requests", "cpu") === undefined || get(container, "resources", "limits", "memory") === undefined) {
    problems.push(`${name}: no CPU request or memory limit`);
  }
  return { env, containerPort, container, podSpec };
}

/** Volume mounted at a path, with its mount. */
function mountAt(facts: ServiceFacts, path: string | undefined): { mount: Obj; volume: Obj } | undefined {
  const mount = list(facts.container.volumeMounts).find((m) => get(m, "mountPath") === path) as Obj | undefined;
  const volume = list(facts.podSpec.volumes).find((v) => get(v, "name") === mount?.name) as Obj | undefined;
  return mount && volume ? { mount, volume } : undefined;
}

function checkTrainer(facts: ServiceFacts, problems: string[]): void {
  const { env } = facts;
  const models = mountAt(facts, env.TRAINER_MODEL_ROOT);
  if (!models || models.mount.readOnly !== true || get(models.volume, "persistentVolumeClaim", "claimName") !== DATA_CLAIM || models.mount.subPath !== "models") {
    problems.push(`trainer: TRAINER_MODEL_ROOT=${env.TRAINER_MODEL_ROOT} is not the read-only models folder of the ${DATA_CLAIM} volume`);
  }
  const datasets = mountAt(facts, env.TRAINER_DATA_ROOT);
  if (!datasets || get(datasets.volume, "persistentVolumeClaim", "claimName") !== DATA_CLAIM || datasets.mount.subPath !== "datasets") {
    problems.push(`trainer: TRAINER_DATA_ROOT=${env.TRAINER_DATA_ROOT} is not the datasets folder of the ${DATA_CLAIM} volume`);
  }
  const work = mountAt(facts, env.TRAINER_WORK_DIR);
  if (!work || work.mount.readOnly === true || !("emptyDir" in work.volume || "ephemeral" in work.volume)) {
    problems.push(`trainer: TRAINER_WORK_DIR=${env.TRAINER_WORK_DIR} is not a writable emptyDir/ephemeral volume`);
  }
  if (!mountAt(facts, "/tmp")) problems.push("trainer: no writable /tmp (HOME and caches; the root file system is read-only)");
  // Stopping checkpoints the running job: minutes for a real model.
  const grace = Number(facts.podSpec.terminationGracePeriodSeconds ?? 30);
  if (grace < 5 * durationSeconds(env.SHUTDOWN_TIMEOUT ?? "30s")) {
    problems.push(`trainer: terminationGracePeriodSeconds ${grace} leaves no time to checkpoint after the RPC drain`);
  }
}

function gpuLimit(facts: ServiceFacts | Obj | undefined): unknown {
  return get(facts, "resources", "limits", "nvidia.com/gpu");
}

/** Whether a label selector (matchLabels and matchExpressions) selects a pod with these labels. */
function selects(selector: unknown, labels: Record<string, string>): boolean {
  const matchLabels = (get(selector, "matchLabels") ?? {}) as Record<string, string>;
  if (Object.entries(matchLabels).some(([k, v]) => labels[k] !== v)) return false;
  return list(get(selector, "matchExpressions")).every((e) => {
    const key = String(get(e, "key"));
    const values = list(get(e, "values")).map(String);
    switch (get(e, "operator")) {
      case "In":
        return key in labels && values.includes(labels[key]!);
      case "NotIn":
        return !(key in labels && values.includes(labels[key]!));
      case "Exists":
        return key in labels;
      case "DoesNotExist":
        return !(key in labels);
      default:
        throw new Error(`selector operator ${String(get(e, "operator"))}`);
    }
  });
}

/** The NATS server and nats-box pods of the Helm chart (deploy/nats), which run in the same namespace. */
const NATS_POD_LABELS = {
  nats: { "app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats", "app.kubernetes.io/component": "nats" },
  "nats-box": { "app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats", "app.kubernetes.io/component": "nats-box" },
};

/**
 * NetworkPolicies: a default deny of ingress and egress for every pod, DNS for every pod, each pod (the Deployments'
 * and NATS') selected by a policy of its own, ingress from anywhere to the gateway only, vLLM reachable only from
 * dataset, eval and the gateway, and the services allowed to NATS.
 */
function checkNetworkPolicies(resources: Resource[], problems: string[]): void {
  const policies = resources.filter((r) => r.kind === "NetworkPolicy");
  const types = (p: Resource) => list(get(p, "spec", "policyTypes")).map(String);
  const all = (p: Resource) => Object.keys((get(p, "spec", "podSelector") ?? {}) as Obj).length === 0;
  const deny = policies.find((p) => all(p) && types(p).includes("Ingress") && types(p).includes("Egress") && !get(p, "spec", "ingress") && !get(p, "spec", "egress"));
  if (!deny) problems.push("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)");
  const dns = policies.some((p) => all(p) && list(get(p, "spec", "egress")).some((rule) => list(get(rule, "ports")).some((port) => get(port, "port") === 53)));
  if (!dns) problems.push("no NetworkPolicy lets every pod reach DNS on port 53");

  const pods = new Map<string, Record<string, string>>(Object.entries(NATS_POD_LABELS));
  for (const d of resources.filter((r) => r.kind === "Deployment")) {
    pods.set(d.metadata.name, (get(d, "spec", "template", "metadata", "labels") ?? {}) as Record<string, string>);
  }
  for (const [name, labels] of pods) {
    if (!policies.some((p) => !all(p) && selects(get(p, "spec", "podSelector"), labels))) problems.push(`pod ${name}: no NetworkPolicy of its own selects it`);
  }
  /** Pods whose ingress rules (of policies selecting `target`) admit traffic from `source` on `port`; "*" = anywhere. */
  const admitted = (target: Record<string, string>, port: number): string[] => {
    const from = new Set<string>();
    for (const p of policies.filter((p) => selects(get(p, "spec", "podSelector"), target))) {
      for (const rule of list(get(p, "spec", "ingress"))) {
        const ports = list(get(rule, "ports"));
        if (ports.length > 0 && !ports.some((x) => get(x, "port") === port)) continue;
        const peers = list(get(rule, "from"));
        if (peers.length === 0) from.add("*");
        for (const peer of peers) {
          if (get(peer, "ipBlock") !== undefined || get(peer, "namespaceSelector") !== undefined) from.add(`*${JSON.stringify(peer)}`);
          for (const [name, labels] of pods) if (selects(get(peer, "podSelector"), labels)) from.add(name);
        }
      }
    }
    return [...from].sort();
  };
  for (const [name, labels] of pods) {
    const open = admitted(labels, name === "vllm" ? 8000 : name.startsWith("nats") ? 4222 : 8080).filter((f) => f.startsWith("*"));
    if (name === "gateway" ? open.length === 0 : open.length > 0) problems.push(`pod ${name}: ingress from outside the namespace ${JSON.stringify(open)}`);
  }
  if (pods.has("vllm")) {
    const clients = admitted(pods.get("vllm")!, 8000);
    if (JSON.stringify(clients) !== JSON.stringify(["dataset", "eval", "gateway"])) problems.push(`vllm:8000 admits ${JSON.stringify(clients)}, not dataset, eval, gateway`);
  }
  const natsClients = admitted(NATS_POD_LABELS.nats, 4222);
  for (const name of SERVICE_NAMES) if (!natsClients.includes(name)) problems.push(`nats:4222 does not admit ${name}`);
  for (const name of SERVICE_NAMES) {
    const labels = pods.get(name);
    const egress = policies
      .filter((p) => labels && selects(get(p, "spec", "podSelector"), labels))
      .flatMap((p) => list(get(p, "spec", "egress")))
      .filter((rule) => list(get(rule, "to")).some((peer) => selects(get(peer, "podSelector"), NATS_POD_LABELS.nats) && get(peer, "podSelector") !== undefined));
    if (!egress.some((rule) => list(get(rule, "ports")).some((x) => get(x, "port") === 4222))) problems.push(`${name}: no egress to nats:4222`);
  }
}


/** Folders of the shared volume the pods mount (subPaths), all made and given to uid 1000 by the model loader. */
const DATA_SUBPATHS = ["models", "models/adapters", "datasets"];
/** Services that call the model server: their config schemas know libs/llm's LLM_* variables. */
const MODEL_CLIENTS = SERVICE_NAMES.filter((name) => KNOWN_ENV[name].has("LLM_BASE_URL"));

/** Seconds of a preStop hook: `sleep N` as an exec command or the native sleep action; undefined if none. */
function preStopSeconds(container: Obj): number | undefined {
  const seconds = get(container, "lifecycle", "preStop", "sleep", "seconds");
  if (typeof seconds === "number") return seconds;
  const command = list(get(container, "lifecycle", "preStop", "exec", "command")).map(String);
  const m = /^(?:\/bin\/)?sleep (\d+)$/.exec(command.join(" "));
  return m ? Number(m[1]) : undefined;
}

/**
 * Durability and access, on the base as written and on each rendered overlay: no Namespace (kubectl delete -k must
 * not delete the one NATS lives in), one shared volume mounted by subPath, a preStop delay the grace period covers,
 * topology spread for ingest and dataset, vLLM's on-demand adapter loading, and every model client pointed at vLLM
 * with the API key from the Secret vLLM requires.
 */
function checkDurability(resources: Resource[], configMaps: Map<string, Record<string, string>>, problems: string[]): void {
  for (const r of resources) if (r.kind === "Namespace") problems.push(`Namespace/${r.metadata.name} is part of the kustomization`);
  const claims = resources.filter((r) => r.kind === "PersistentVolumeClaim").map((r) => r.metadata.name);
  if (JSON.stringify(claims) !== JSON.stringify([DATA_CLAIM])) problems.push(`volume claims ${JSON.stringify(claims)}, expected only ${DATA_CLAIM}`);
  for (const d of resources.filter((r) => r.kind === "Deployment")) {
    const podSpec = get(d, "spec", "template", "spec") as Obj;
    const claimed = new Set(list(podSpec.volumes).filter((v) => get(v, "persistentVolumeClaim") !== undefined).map((v) => String(get(v, "name"))));
    for (const v of list(podSpec.volumes)) {
      const claim = get(v, "persistentVolumeClaim", "claimName");
      if (claim !== undefined && claim !== DATA_CLAIM) problems.push(`${d.metadata.name}: volume of claim ${String(claim)}`);
    }
    for (const c of list(podSpec.containers)) {
      for (const m of list(get(c, "volumeMounts")).filter((m) => claimed.has(String(get(m, "name"))))) {
        if (!DATA_SUBPATHS.includes(String(get(m, "subPath")))) problems.push(`${d.metadata.name}: mounts the shared volume at ${String(get(m, "mountPath"))} with subPath ${String(get(m, "subPath"))}`);
      }
    }
  }
  for (const name of SERVICE_NAMES) {
    const d = find(resources, "Deployment", name);
    if (!d) continue;
    const podSpec = get(d, "spec", "template", "spec") as Obj;
    const container = list(podSpec.containers).find((c) => get(c, "name") === name) as Obj;
    const preStop = preStopSeconds(container);
    const env: Record<string, string> = {};
    for (const from of list(container.envFrom)) Object.assign(env, configMaps.get(String(get(from, "configMapRef", "name"))) ?? {});
    const shutdown = durationSeconds(env.SHUTDOWN_TIMEOUT ?? "30s");
    const grace = Number(podSpec.terminationGracePeriodSeconds ?? 30);
    if (preStop === undefined || preStop < 5) problems.push(`${name}: no preStop delay of at least 5 s before the listener closes`);
    else if (!(grace >= preStop + shutdown + 10)) problems.push(`${name}: grace ${grace}s does not cover preStop ${preStop}s + SHUTDOWN_TIMEOUT ${shutdown}s + the NATS drain`);
    if (name === "ingest" || name === "dataset") {
      const labels = (get(d, "spec", "template", "metadata", "labels") ?? {}) as Record<string, string>;
      const spread = list(podSpec.topologySpreadConstraints).find(
        (t) => get(t, "topologyKey") === "kubernetes.io/hostname" && get(t, "maxSkew") === 1 && selects(get(t, "labelSelector"), labels),
      );
      if (!spread) problems.push(`${name}: no topology spread of its pods over nodes (kubernetes.io/hostname, maxSkew 1)`);
    }
    const envVars = new Map(list(container.env).map((e) => [String(get(e, "name")), e] as const));
    if (MODEL_CLIENTS.includes(name)) {
      if (env.LLM_BASE_URL !== undefined && !/^http:\/\/vllm(\.ragtune(\.svc)?)?:8000\/v1$/.test(env.LLM_BASE_URL)) problems.push(`${name}: LLM_BASE_URL=${env.LLM_BASE_URL} is not the vllm Service`);
      if (env.LLM_BASE_URL === undefined) problems.push(`${name}: no LLM_BASE_URL`);
      // The Secret vLLM reads its --api-key from (dev generates it: ragtune-llm-auth-<hash>).
      const ref = get(envVars.get("LLM_API_KEY"), "valueFrom", "secretKeyRef");
      if (get(ref, "key") !== "LLM_API_KEY" || !/^ragtune-llm-auth(-[a-z0-9]+)?$/.test(String(get(ref, "name")))) {
        problems.push(`${name}: LLM_API_KEY is not read from the Secret ragtune-llm-auth`);
      }
    }
  }
  const vllm = find(resources, "Deployment", "vllm");
  if (vllm) {
    const container = list(get(vllm, "spec", "template", "spec", "containers"))[0] as Obj;
    const env = new Map(list(container.env).map((e) => [String(get(e, "name")), String(get(e, "value"))] as const));
    const adapters = list(container.volumeMounts).find((m) => get(m, "subPath") === "models/adapters");
    if (!/^(true|1)$/i.test(env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING") ?? "")) problems.push("vllm: VLLM_ALLOW_RUNTIME_LORA_UPDATING is not on");
    if (!(env.get("VLLM_PLUGINS") ?? "").split(",").includes("lora_filesystem_resolver")) problems.push("vllm: VLLM_PLUGINS does not load lora_filesystem_resolver");
    if (!adapters || env.get("VLLM_LORA_RESOLVER_CACHE_DIR") !== get(adapters, "mountPath")) problems.push("vllm: VLLM_LORA_RESOLVER_CACHE_DIR is not the adapters folder of the shared volume");
    // Promoted adapters: the gateway writes them where vLLM reads them, at the path it asks vLLM to load.
    const gateway = find(resources, "Deployment", "gateway");
    const gatewayPod = get(gateway, "spec", "template", "spec") as Obj;
    const gatewayContainer = list(gatewayPod?.containers).find((c) => get(c, "name") === "gateway") as Obj | undefined;
    const gatewayEnv: Record<string, string> = {};
    for (const from of list(gatewayContainer?.envFrom)) Object.assign(gatewayEnv, configMaps.get(String(get(from, "configMapRef", "name"))) ?? {});
    const written = list(gatewayContainer?.volumeMounts).find((m) => get(m, "mountPath") === gatewayEnv.GATEWAY_ADAPTER_DIR);
    if (!written || get(written, "subPath") !== "models/adapters" || get(written, "readOnly") === true) {
      problems.push(`gateway: GATEWAY_ADAPTER_DIR=${gatewayEnv.GATEWAY_ADAPTER_DIR} is not the writable adapters folder of the shared volume`);
    }
    if (get(adapters, "mountPath") !== gatewayEnv.GATEWAY_ADAPTER_DIR) problems.push("vllm: reads adapters at another path than the gateway writes and loads them");
    if ((gatewayEnv.GATEWAY_LORA_FORMAT ?? "peft") !== "peft") problems.push("gateway: GATEWAY_LORA_FORMAT must be peft for vLLM");
    // The resolver loads an adapter only if its base_model_name_or_path (the real path the trainer resolved) is the
    // path vLLM serves: a folder under /models, not a symlink to one such as base-model.
    const model = [...list(container.command), ...list(container.args)].map(String).find((a) => a.startsWith("/models/"));
    if (!model || /\/base-model$/.test(model)) problems.push(`vllm: serves ${String(model)}; serve the model folder the training jobs name`);
  }
}

// ---------------------------------------------------------------------------------------------------------

describe("deploy/k8s", () => {
  it("every YAML file parses, and every Kubernetes document has apiVersion, kind and metadata.name", () => {
    const files = filesUnder(DEPLOY, /\.ya?ml$/);
    expect(files.length).toBeGreaterThan(10);
    for (const file of files) {
      const docs = loadYaml(file);
      expect(docs.length, relative(ROOT, file)).toBeGreaterThan(0);
      if (file.startsWith(K8S) && !file.endsWith("kustomization.yaml")) asResources(docs, relative(ROOT, file));
    }
  });

  it("every file a kustomization names exists", () => {
    const missing: string[] = [];
    for (const dir of [BASE, ...OVERLAYS.map((o) => join(K8S, "overlays", o))]) {
      const k = readKustomization(dir);
      const paths = [
        ...k.resources,
        ...k.patches.flatMap((p) => (p.path ? [p.path] : [])),
        ...[...k.configMapGenerator, ...k.secretGenerator].flatMap((g) => [...(g.envs ?? []), ...(g.files ?? [])]),
      ];
      for (const p of paths) {
        const full = join(dir, p);
        const ok = existsSync(full) && (statSync(full).isFile() || existsSync(join(full, "kustomization.yaml")));
        if (!ok) missing.push(`${relative(ROOT, dir)}: ${p}`);
      }
    }
    expect(missing).toEqual([]);
  });

  it("every service has a Deployment and a Service on its RPC port, gRPC health probes, and only known env vars", () => {
    const { resources, configMaps } = loadBase();
    const problems: string[] = [];
    for (const name of SERVICE_NAMES) {
      const facts = checkService(resources, configMaps, name, problems);
      if (name === "trainer" && facts) checkTrainer(facts, problems);
    }
    expect(problems).toEqual([]);
  });

  it("the base ConfigMaps hold only variables of the services that read them", () => {
    const { resources, configMaps } = loadBase();
    const problems: string[] = [];
    const common = configMaps.get("ragtune-common") ?? {};
    for (const key of Object.keys(common)) if (!BASE_ENV.has(key)) problems.push(`ragtune-common: ${key} is not a shared variable`);
    // A ConfigMap used by several services must be known to each; the check above covers it per service.
    expect(Object.keys(common).sort()).toEqual(expect.arrayContaining(["NATS_URL", "RPC_HOST", "RPC_PORT", "SHUTDOWN_TIMEOUT"]));
    expect(resources.filter((r) => r.kind === "ConfigMap")).toEqual([]); // generated, so changes roll the pods
    expect(problems).toEqual([]);
  });

  it("overlay patches and generator merges set only variables the services know", () => {
    const { configMaps } = loadBase();
    const users = new Map<string, ServiceName[]>([...configMaps.keys()].map((cm) => [cm, [] as ServiceName[]]));
    const { resources } = loadBase();
    for (const name of SERVICE_NAMES) {
      const container = list(get(find(resources, "Deployment", name), "spec", "template", "spec", "containers"))[0];
      for (const from of list(get(container, "envFrom"))) users.get(String(get(from, "configMapRef", "name")))?.push(name);
    }
    const problems: string[] = [];
    for (const overlay of OVERLAYS) {
      const k = readKustomization(join(K8S, "overlays", overlay));
      for (const g of k.configMapGenerator) {
        const readers = users.get(g.name);
        if (!readers || readers.length === 0) problems.push(`${overlay}: generator ${g.name} is not read by any service`);
        for (const key of Object.keys(generatorData(k, g))) {
          for (const svc of readers ?? []) if (!KNOWN_ENV[svc].has(key)) problems.push(`${overlay}: ${g.name} sets ${key}, unknown to ${svc}`);
        }
      }
      for (const p of k.patches) {
        for (const doc of p.path ? loadYaml(join(k.dir, p.path)) : []) {
          const name = get(doc, "metadata", "name") as ServiceName;
          if (get(doc, "kind") !== "Deployment" || !SERVICE_NAMES.includes(name)) continue;
          for (const c of list(get(doc, "spec", "template", "spec", "containers"))) {
            for (const e of list(get(c, "env"))) {
              const key = String(get(e, "name"));
              if (!KNOWN_ENV[name].has(key)) problems.push(`${overlay}/${p.path}: ${name} sets ${key}, unknown to it`);
            }
          }
        }
      }
    }
    expect(problems).toEqual([]);
  });

  it("prod-l4 puts the trainer and vLLM on L4 nodes with one GPU each; the base asks for no GPU but vLLM's", () => {
    const k = readKustomization(join(K8S, "overlays", "prod-l4"));
    const patched = (kind: string, name: string) =>
      k.patches.flatMap((p) => (p.path ? loadYaml(join(k.dir, p.path)) : [])).filter((d) => get(d, "kind") === kind && get(d, "metadata", "name") === name);
    for (const name of ["trainer", "vllm"]) {
      const patches = patched("Deployment", name);
      expect(patches.length, `a prod-l4 patch of the ${name} Deployment`).toBeGreaterThan(0);
      expect(patches.some((d) => get(d, "spec", "template", "spec", "nodeSelector", "cloud.google.com/gke-accelerator") === "nvidia-l4")).toBe(true);
      expect(patches.some((d) => list(get(d, "spec", "template", "spec", "tolerations")).some((t) => get(t, "key") === "nvidia.com/gpu"))).toBe(true);
    }
    const trainerContainer = list(get(patched("Deployment", "trainer")[0], "spec", "template", "spec", "containers")).find((c) => get(c, "name") === "trainer");
    expect(gpuLimit(trainerContainer as Obj)).toBe(1);

    const { resources } = loadBase();
    const baseContainer = (name: string) => list(get(find(resources, "Deployment", name), "spec", "template", "spec", "containers"))[0] as Obj;
    expect(gpuLimit(baseContainer("trainer"))).toBeUndefined();
    expect(gpuLimit(baseContainer("vllm"))).toBe(1);
    expect(get(find(resources, "Deployment", "trainer"), "spec", "template", "spec", "nodeSelector")).toBeUndefined();
    expect(k.replicas.find((r) => r.name === "trainer")?.count).toBeGreaterThan(1);
  });

  it("vLLM serves a base model from the read-only models volume with LoRA enabled and /health probes", () => {
    const { resources } = loadBase();
    const deployment = find(resources, "Deployment", "vllm");
    const container = list(get(deployment, "spec", "template", "spec", "containers"))[0] as Obj;
    expect(String(container.image)).toMatch(/^vllm\/vllm-openai:v\d/);
    const args = [...list(container.command), ...list(container.args)].map(String);
    expect(args).toContain("--enable-lora");
    expect(args.some((a) => /^--max-lora-rank=\d+$/.test(a))).toBe(true);
    const modelArg = args.find((a) => a.startsWith("/models/"));
    expect(modelArg, "model path on the models volume").toBeDefined();
    const mount = list(container.volumeMounts).find((m) => get(m, "mountPath") === "/models");
    expect(get(mount, "readOnly")).toBe(true);
    const volume = list(get(deployment, "spec", "template", "spec", "volumes")).find((v) => get(v, "name") === get(mount, "name"));
    expect(get(volume, "persistentVolumeClaim", "claimName")).toBe(DATA_CLAIM);
    expect(get(mount, "subPath")).toBe("models");
    // Adapters: the shared volume's models/adapters/ folder, read-only.
    const adapters = list(container.volumeMounts).find((m) => get(m, "mountPath") === "/adapters");
    expect(adapters).toMatchObject({ name: get(mount, "name"), subPath: "models/adapters", readOnly: true });
    expect(list(get(deployment, "spec", "template", "spec", "containers", 0, "env")).map((e) => get(e, "name"))).toContain("VLLM_ALLOW_RUNTIME_LORA_UPDATING");
    const port = list(container.ports).find((p) => get(p, "name") === "http");
    for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      expect(get(container, probe, "httpGet", "path")).toBe("/health");
      expect([get(port, "name"), get(port, "containerPort")]).toContain(get(container, probe, "httpGet", "port"));
    }
    const service = find(resources, "Service", "vllm");
    expect(get(service, "spec", "ports", 0, "targetPort")).toBe("http");
    expect(get(find(resources, "PersistentVolumeClaim", DATA_CLAIM), "spec", "accessModes")).toBeDefined();
  });

  it("vLLM starts as a non-root uid the image has no user for (USER, LOGNAME, a writable HOME) and requires an API key from a Secret", () => {
    const { resources } = loadBase();
    const podSpec = get(find(resources, "Deployment", "vllm"), "spec", "template", "spec") as Obj;
    const container = list(podSpec.containers)[0] as Obj;
    // vllm/vllm-openai has no passwd entry for a non-root uid: torch's getpass.getuser() needs $USER or $LOGNAME.
    const uid = get(container, "securityContext", "runAsUser") ?? get(podSpec, "securityContext", "runAsUser");
    expect(get(podSpec, "securityContext", "runAsNonRoot")).toBe(true);
    expect(uid).not.toBe(0);
    const env = new Map(list(container.env).map((e) => [String(get(e, "name")), e] as const));
    expect(get(env.get("USER"), "value") ?? get(env.get("LOGNAME"), "value"), "USER or LOGNAME").toMatch(/^[a-z_][a-z0-9_-]*$/);
    const home = mountAt({ env: {}, containerPort: 0, container, podSpec }, get(env.get("HOME"), "value") as string | undefined);
    expect(home, "HOME on a mounted volume").toBeDefined();
    expect(home!.mount.readOnly).not.toBe(true);
    expect("emptyDir" in home!.volume).toBe(true);
    // The API key: from a Secret, never a literal, and passed by reference.
    expect(get(env.get("VLLM_API_KEY"), "valueFrom", "secretKeyRef")).toEqual({ name: "ragtune-llm-auth", key: "LLM_API_KEY" });
    const args = [...list(container.command), ...list(container.args)].map(String);
    expect(args).toContain("--api-key=$(VLLM_API_KEY)");
    expect(args.filter((a) => a.startsWith("--api-key"))).toHaveLength(1);
  });

  it("durability: no Namespace, one shared volume by subPath, preStop before the listener closes, spread ingest and dataset, adapters on demand, model clients wired to vLLM", () => {
    const { resources, configMaps } = loadBase();
    const problems: string[] = [];
    checkDurability(resources, configMaps, problems);
    expect(problems).toEqual([]);
    expect(MODEL_CLIENTS.sort()).toEqual(["dataset", "eval", "gateway"]);
    // The namespace is applied on its own (README), with the Pod Security labels.
    const [namespace] = asResources(loadYaml(join(K8S, "namespace.yaml")), "namespace.yaml");
    expect(namespace).toMatchObject({ kind: "Namespace", metadata: { name: "ragtune" } });
    expect(namespace!.metadata.labels?.["pod-security.kubernetes.io/enforce"]).toBe("baseline");
    for (const dir of [BASE, ...OVERLAYS.map((o) => join(K8S, "overlays", o))]) expect(readKustomization(dir).resources).not.toContain("namespace.yaml");
  });

  it("the model loader makes every folder the pods mount and gives it to uid 1000 before it starts", () => {
    const [pod] = asResources(loadYaml(join(K8S, "tools", "model-loader.yaml")), "model-loader.yaml");
    const init = list(get(pod, "spec", "initContainers"))[0] as Obj;
    const script = list(init.command).map(String).join(" ");
    const root = String(get(list(init.volumeMounts)[0], "mountPath"));
    expect(get(list(init.volumeMounts)[0], "subPath")).toBeUndefined();
    const args = (command: string) => (new RegExp(`${command} ([^&]*)`).exec(script)?.[1] ?? "").trim().split(/\s+/);
    for (const sub of DATA_SUBPATHS) {
      expect(args("mkdir -p").some((dir) => `${dir}/`.startsWith(`${root}/${sub}/`)), `mkdir ${sub}`).toBe(true);
      expect(args("chown 1000:1000"), `chown ${sub}`).toContain(`${root}/${sub}`);
    }
    expect(get(init, "securityContext", "capabilities")).toEqual({ drop: ["ALL"], add: ["CHOWN"] });
    const loader = list(get(pod, "spec", "containers"))[0] as Obj;
    expect(get(loader, "securityContext", "runAsUser")).toBe(1000);
    expect(get(list(get(pod, "spec", "volumes"))[0], "persistentVolumeClaim", "claimName")).toBe(DATA_CLAIM);
  });

  it("NetworkPolicies deny by default, select every pod, admit only the gateway from anywhere and only the model clients to vLLM", () => {
    const problems: string[] = [];
    checkNetworkPolicies(loadBase().resources, problems);
    expect(problems).toEqual([]);
  });

  it("vLLM's --max-lora-rank, in the base and every overlay, is the largest LoRA rank the trainer accepts", () => {
    // A larger trainer limit makes adapters vLLM refuses to load; a smaller one wastes vLLM's LoRA memory.
    const maxRank = contractMaxRank();
    const found = filesUnder(K8S, /\.ya?ml$/).flatMap((file) =>
      loadYaml(file).flatMap((doc) => maxLoraRanks(doc).map((rank) => `${relative(ROOT, file)}: --max-lora-rank=${rank}`)),
    );
    expect(found.filter((f) => f.startsWith("deploy/k8s/base/vllm.yaml:"))).toHaveLength(1);
    expect(found, `${HYPERPARAMETER_CONTRACT} says hyperparameters.rank.max = ${maxRank}`).toEqual(
      found.map((f) => f.replace(/=.*$/, `=${maxRank}`)),
    );
  });

  it("the gateway is the only service exposed outside the cluster, and the gateway's HPA owns its replica count", () => {
    const exposed: string[] = [];
    const all: Resource[] = [];
    for (const dir of [BASE, ...OVERLAYS.map((o) => join(K8S, "overlays", o))]) {
      const k = readKustomization(dir);
      for (const r of k.resources.filter((r) => r.endsWith(".yaml"))) all.push(...asResources(loadYaml(join(dir, r)), r));
    }
    for (const r of all) {
      const type = get(r, "spec", "type");
      if (r.kind === "Ingress" || (r.kind === "Service" && (type === "LoadBalancer" || type === "NodePort"))) {
        exposed.push(`${r.kind}/${r.metadata.name} → ${JSON.stringify(get(r, "spec", "selector") ?? get(r, "spec", "rules"))}`);
        if (r.kind === "Service") expect(get(r, "spec", "selector", "app.kubernetes.io/name"), r.metadata.name).toBe("gateway");
      }
    }
    expect(exposed.length).toBe(1);
    const hpa = all.find((r) => r.kind === "HorizontalPodAutoscaler");
    expect(get(hpa, "spec", "scaleTargetRef")).toMatchObject({ kind: "Deployment", name: "gateway" });
    expect(get(find(loadBase().resources, "Deployment", "gateway"), "spec", "replicas")).toBeUndefined();
  });

  it("dev runs every service with one replica, the CPU trainer image, and no vLLM", () => {
    const k = readKustomization(join(K8S, "overlays", "dev"));
    for (const name of SERVICE_NAMES) expect(k.replicas.find((r) => r.name === name)?.count, name).toBe(1);
    expect(k.images.find((i) => i.name === "ragtune/trainer")?.newTag).toMatch(/cpu/);
    const deletes = k.patches.flatMap((p) => (p.path ? loadYaml(join(k.dir, p.path)) : [])).filter((d) => get(d, "$patch") === "delete");
    expect(deletes.map((d) => `${String(get(d, "kind"))}/${String(get(d, "metadata", "name"))}`).sort()).toEqual(["Deployment/vllm", "Service/vllm"]);
    expect(k.secretGenerator.map((g) => g.name)).toContain("ragtune-rpc-auth");
  });

  it("NATS: prod-l4 keeps 3 replicas and gives every service the credentials the servers require; dev 1 replica, none", () => {
    const natsSettings = (overlay: string) => {
      const k = readKustomization(join(K8S, "overlays", overlay));
      const common = Object.assign({}, ...k.configMapGenerator.filter((g) => g.name === "ragtune-common").map((g) => generatorData(k, g)));
      const fromSecret: string[] = [];
      for (const doc of k.patches.flatMap((p) => (p.path ? loadYaml(join(k.dir, p.path)) : []))) {
        for (const c of list(get(doc, "spec", "template", "spec", "containers"))) {
          for (const e of list(get(c, "env"))) {
            if (get(e, "valueFrom", "secretKeyRef", "name") === "ragtune-nats-auth") fromSecret.push(`${String(get(doc, "metadata", "name"))}:${String(get(e, "name"))}`);
          }
        }
      }
      return { replicas: common.NATS_REPLICAS, fromSecret: fromSecret.sort() };
    };
    expect(natsSettings("prod-l4")).toEqual({
      replicas: "3",
      fromSecret: SERVICE_NAMES.flatMap((n) => [`${n}:NATS_PASSWORD`, `${n}:NATS_USER`]).sort(),
    });
    expect(natsSettings("dev")).toEqual({ replicas: "1", fromSecret: [] });
    // The servers (Helm values) require the same user and password in production, run no nats-box there, and
    // drop both in dev.
    const [prod] = loadYaml(join(DEPLOY, "nats", "values.yaml"));
    const [dev] = loadYaml(join(DEPLOY, "nats", "values-dev.yaml"));
    expect(get(prod, "config", "cluster", "replicas")).toBe(3);
    expect(get(prod, "config", "merge", "authorization")).toEqual({ user: "<< $NATS_USER >>", password: "<< $NATS_PASSWORD >>" });
    for (const key of ["NATS_USER", "NATS_PASSWORD"]) {
      expect(get(prod, "container", "env", key, "valueFrom", "secretKeyRef")).toEqual({ name: "ragtune-nats-auth", key });
      expect(get(dev, "container", "env", key)).toBeNull();
    }
    expect(get(prod, "natsBox", "enabled")).toBe(false);
    expect(get(dev, "config", "merge", "authorization")).toBeNull();
  });
});

// ---------------------------------------------------------------------------------------------------------
// Rendered overlays (kubectl's built-in kustomize), where kubectl is installed.

function findKubectl(): string | undefined {
  try {
    execFileSync("kubectl", ["version", "--client"], { stdio: "ignore" });
    return "kubectl";
  } catch {
    return undefined;
  }
}
const kubectl = findKubectl();

function render(overlay: string): Resource[] {
  const out = execFileSync(kubectl!, ["kustomize", join(K8S, "overlays", overlay)], { encoding: "utf8", maxBuffer: 16 * 1024 * 1024 });
  return asResources(
    parseAllDocuments(out).map((d) => d.toJS() as unknown).filter((d) => d !== null),
    `kubectl kustomize ${overlay}`,
  );
}

/** The trainer container's environment from its ConfigMaps and env (rendered resources). */
function trainerEnv(resources: Resource[]): Record<string, string | undefined> {
  const configMaps = new Map(resources.filter((r) => r.kind === "ConfigMap").map((r) => [r.metadata.name, (r.data ?? {}) as Record<string, string>]));
  const problems: string[] = [];
  const facts = checkService(resources, configMaps, "trainer", problems);
  expect(problems).toEqual([]);
  return facts!.env;
}

describe("deploy/k8s overlays rendered by kubectl kustomize", () => {
  it("kubectl is installed (every machine image of this project has it)", () => {
    expect(kubectl, "kubectl is not on PATH: install kubectl >= 1.27 (its built-in kustomize renders the overlays)").toBeDefined();
  });

  it.each(OVERLAYS)("%s: every service passes the checks, in the ragtune namespace", (overlay) => {
    const resources = render(overlay);
    const configMaps = new Map(resources.filter((r) => r.kind === "ConfigMap").map((r) => [r.metadata.name, (r.data ?? {}) as Record<string, string>]));
    const problems: string[] = [];
    checkDurability(resources, configMaps, problems);
    for (const name of SERVICE_NAMES) {
      const facts = checkService(resources, configMaps, name, problems);
      if (name === "trainer" && facts) checkTrainer(facts, problems);
    }
    for (const r of resources) if (r.kind !== "Namespace" && r.metadata.namespace !== "ragtune") problems.push(`${r.kind}/${r.metadata.name} outside the namespace`);
    checkNetworkPolicies(resources, problems);
    expect(problems).toEqual([]);
  });

  it("prod-l4: the trainer replicas and vLLM each take one L4; nothing else asks for a GPU", () => {
    const resources = render("prod-l4");
    const gpu: Record<string, unknown> = {};
    for (const d of resources.filter((r) => r.kind === "Deployment")) {
      const spec = get(d, "spec", "template", "spec") as Obj;
      gpu[d.metadata.name] = list(spec.containers).map((c) => gpuLimit(c as Obj) ?? 0)[0];
      if (gpu[d.metadata.name] !== 0) expect(get(spec, "nodeSelector", "cloud.google.com/gke-accelerator"), d.metadata.name).toBe("nvidia-l4");
    }
    expect(gpu).toEqual({ ingest: 0, dataset: 0, trainer: 1, eval: 0, gateway: 0, vllm: 1 });
    expect(maxLoraRanks(find(resources, "Deployment", "vllm"))).toEqual([String(contractMaxRank())]);
    expect(get(find(resources, "Deployment", "trainer"), "spec", "replicas")).toBeGreaterThan(1);
    expect(get(find(resources, "Deployment", "trainer"), "spec", "template", "spec", "containers", 0, "image")).toBe("ragtune/trainer:0.1.0");
    // A trainer on an L4 must train on it: a job that finds no GPU fails (CUDA_UNAVAILABLE) instead of using the CPU.
    expect(trainerEnv(resources).TRAINER_DEVICE).toBe("cuda");
  });

  it("prod-l4: ingest and dataset run 2 replicas under a PodDisruptionBudget; the GPU pods bound their node-disk use", () => {
    const resources = render("prod-l4");
    for (const name of ["ingest", "dataset"]) {
      const deployment = find(resources, "Deployment", name);
      expect(get(deployment, "spec", "replicas"), name).toBeGreaterThanOrEqual(2);
      const labels = get(deployment, "spec", "template", "metadata", "labels") as Record<string, string>;
      const pdbs = resources.filter((r) => r.kind === "PodDisruptionBudget" && selects(get(r, "spec", "selector"), labels));
      expect(pdbs.map((p) => get(p, "spec", "minAvailable") ?? get(p, "spec", "maxUnavailable")), name).toEqual([1]);
    }
    const bytes = (q: unknown) => {
      const m = /^(\d+)(Gi|Mi)$/.exec(String(q));
      if (!m) throw new Error(`quantity ${String(q)}`);
      return Number(m[1]) * (m[2] === "Gi" ? 1024 : 1);
    };
    for (const name of ["trainer", "vllm"]) {
      const spec = get(find(resources, "Deployment", name), "spec", "template", "spec") as Obj;
      const container = list(spec.containers)[0] as Obj;
      const limit = get(container, "resources", "limits", "ephemeral-storage");
      expect(get(container, "resources", "requests", "ephemeral-storage"), name).toBeDefined();
      // The limit holds every disk-backed emptyDir at its size limit.
      const disk = list(spec.volumes).filter((v) => isObj(get(v, "emptyDir")) && get(v, "emptyDir", "medium") !== "Memory");
      expect(disk.length, name).toBeGreaterThan(0);
      const total = disk.reduce((sum: number, v) => sum + bytes(get(v, "emptyDir", "sizeLimit")), 0);
      expect(bytes(limit), name).toBeGreaterThanOrEqual(total);
    }
  });

  it("dev: no GPU, no GPU node selector, no vLLM, the CPU trainer image, a generated RPC token", () => {
    const resources = render("dev");
    const text = JSON.stringify(resources);
    expect(text).not.toContain("nvidia.com/gpu");
    expect(text).not.toContain("gke-accelerator");
    expect(resources.filter((r) => r.metadata.name === "vllm")).toEqual([]);
    expect(get(find(resources, "Deployment", "trainer"), "spec", "template", "spec", "containers", 0, "image")).toMatch(/^ragtune\/trainer:.*cpu/);
    expect(trainerEnv(resources).TRAINER_DEVICE ?? "auto").not.toBe("cuda");
    const secret = resources.find((r) => r.kind === "Secret" && r.metadata.name.startsWith("ragtune-rpc-auth"));
    const token = Buffer.from(String(get(secret, "data", "RPC_AUTH_TOKEN")), "base64").toString();
    expect(token.length).toBeGreaterThanOrEqual(16);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Dockerfiles

/** Instructions of a Dockerfile, continuation lines joined, comments dropped. */
function dockerInstructions(file: string): string[] {
  const out: string[] = [];
  let current = "";
  for (const raw of readFileSync(file, "utf8").split("\n")) {
    const line = raw.trim();
    if (current === "" && (line === "" || line.startsWith("#"))) continue;
    if (line.startsWith("#")) continue;
    if (line.endsWith("\\")) {
      current += `${line.slice(0, -1)} `;
      continue;
    }
    out.push(current + line);
    current = "";
  }
  return out;
}

/** A .dockerignore as a predicate on repository-relative paths (a path is out when it or a parent matches). */
function dockerIgnore(file: string): (path: string) => boolean {
  const patterns = readFileSync(file, "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((p) => {
      if (p.startsWith("!")) throw new Error(`${file}: exceptions (${p}) are not understood by this check`);
      const re = p
        .replace(/[.+^${}()|[\]\\]/g, "\\$&")
        .replace(/\*\*\//g, "\u0000")
        .replace(/\*/g, "[^/]*")
        .replace(/\?/g, "[^/]")
        .replace(/\u0000/g, "(?:.*/)?");
      return new RegExp(`^${re}$`);
    });
  return (path) => {
    const parts = path.split("/");
    for (let i = 1; i <= parts.length; i++) {
      const prefix = parts.slice(0, i).join("/");
      if (patterns.some((re) => re.test(prefix))) return true;
    }
    return false;
  };
}

describe("deploy/docker", () => {
  it.each(["node-service", "trainer"])("%s.Dockerfile copies only files that exist and its ignore file lets through", (name) => {
    const dockerfile = join(DEPLOY, "docker", `${name}.Dockerfile`);
    const ignored = dockerIgnore(`${dockerfile}.dockerignore`);
    const problems: string[] = [];
    let copies = 0;
    for (const instruction of dockerInstructions(dockerfile)) {
      const m = /^COPY\s+(.*)$/i.exec(instruction);
      if (!m) continue;
      const words = m[1]!.split(/\s+/).filter(Boolean);
      if (words.some((w) => w.startsWith("--from="))) continue;
      const sources = words.filter((w) => !w.startsWith("--")).slice(0, -1);
      for (const src of sources) {
        copies++;
        const rel = src.replace(/^\.\/?/, "").replace(/\/$/, "");
        if (rel === "") continue; // the whole context
        if (!existsSync(join(ROOT, rel))) problems.push(`COPY ${src}: not in the repository`);
        else if (ignored(rel)) problems.push(`COPY ${src}: excluded by ${name}.Dockerfile.dockerignore`);
      }
    }
    expect(copies).toBeGreaterThan(0);
    expect(problems).toEqual([]);
    // What the images are built from must reach the build context: manifests, lockfile, sources.
    for (const path of ["package.json", "package-lock.json", "nx.json", "tsconfig.base.json", "libs/rpc/src/index.ts", "services/trainer/worker/ragtune_worker"]) {
      expect(ignored(path), path).toBe(false);
    }
    for (const path of ["node_modules", "libs/rpc/node_modules", "services/trainer/dist", "services/trainer/worker/.venv", ".git"]) {
      expect(ignored(path), path).toBe(true);
    }
  });

  it.each(SERVICE_NAMES)("%s compiles src/main.ts to the dist/main.js the images start", (name) => {
    const dir = join(ROOT, "services", name);
    const [tsconfig] = loadYaml(join(dir, "tsconfig.build.json")); // JSON is YAML
    expect(get(tsconfig, "compilerOptions", "rootDir")).toBe("src");
    expect(get(tsconfig, "compilerOptions", "outDir")).toBe("dist");
    expect(existsSync(join(dir, "src", "main.ts"))).toBe(true);
    const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name: string; scripts?: Record<string, string> };
    expect(pkg.name).toBe(`@ragtune/${name}-service`); // the Dockerfiles build `@ragtune/${SERVICE}-service`
    expect(pkg.scripts?.build).toContain("tsconfig.build.json");
  });

  it("the images start node on services/<name>/dist/main.js and the trainer image points the service at its worker", () => {
    const node = dockerInstructions(join(DEPLOY, "docker", "node-service.Dockerfile"));
    expect(node.find((i) => i.startsWith("CMD"))).toContain("services/${SERVICE}/dist/main.js");
    expect(node.some((i) => /^USER\s+\d+/.test(i))).toBe(true);
    const trainer = dockerInstructions(join(DEPLOY, "docker", "trainer.Dockerfile"));
    expect(trainer.find((i) => i.startsWith("CMD"))).toContain("services/trainer/dist/main.js");
    expect(trainer.some((i) => /^USER\s+\d+/.test(i))).toBe(true);
    const trainerEnv = readEnvFile(join(BASE, "trainer.env"));
    const dockerText = trainer.join("\n");
    // The paths the Kubernetes config gives the trainer exist in the image.
    expect(dockerText).toContain(`TRAINER_PYTHON=${trainerEnv.TRAINER_PYTHON}`);
    expect(dockerText).toContain(`TRAINER_WORKER_DIR=${trainerEnv.TRAINER_WORKER_DIR}`);
    expect(dockerText).toContain(`./services/trainer/worker/ragtune_worker`);
    expect(trainerEnv.TRAINER_WORKER_DIR).toBe("/app/services/trainer/worker");
    expect(dockerText).toContain("services/trainer/worker/requirements.txt");
  });

  it("the images run Node 22 LTS and install only production dependencies of the service", () => {
    for (const name of ["node-service", "trainer"]) {
      const instructions = dockerInstructions(join(DEPLOY, "docker", `${name}.Dockerfile`));
      expect(instructions, name).toContain("ARG NODE_VERSION=22");
      const stage = instructions.slice(instructions.findIndex((i) => /^FROM\s.*\sAS\s+prod-deps$/i.test(i)));
      const install = stage.find((i) => i.startsWith("RUN") && i.includes("npm ci"));
      expect(install, `${name}: prod-deps installs with npm ci`).toMatch(/npm ci .*--omit=dev .*--workspace /);
      for (const pkg of TEST_ONLY_NPM) expect(install, `${name}: fails on ${pkg}`).toContain(pkg);
    }
  });

  it("no workspace package declares a test-only package as a production dependency (npm marks them dev, --omit=dev drops them)", () => {
    // npm decides what --omit=dev leaves out from the whole lockfile: one workspace listing @ragtune/testing under
    // "dependencies" puts it into every service image.
    const manifests = ["package.json", ...filesUnder(join(ROOT, "libs"), /^package\.json$/), ...filesUnder(join(ROOT, "services"), /^package\.json$/), join(ROOT, "tools", "package.json")]
      .map((f) => (f.startsWith("/") ? f : join(ROOT, f)))
      .filter((f) => !f.includes("node_modules") && !f.includes(`${join("web", "")}`) && existsSync(f));
    const offenders: string[] = [];
    for (const file of manifests) {
      const pkg = JSON.parse(readFileSync(file, "utf8")) as { dependencies?: Record<string, string> };
      for (const dep of TEST_ONLY_NPM) if (pkg.dependencies?.[dep] !== undefined) offenders.push(`${relative(ROOT, file)}: ${dep}`);
    }
    expect(manifests.length).toBeGreaterThan(8);
    expect(offenders).toEqual([]);
    // Registry packages: marked dev in the lockfile, so `npm ci --omit=dev` leaves them out.
    const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8")) as { packages: Record<string, { dev?: boolean; link?: boolean }> };
    for (const dep of TEST_ONLY_NPM.filter((d) => !d.startsWith("@ragtune/"))) {
      expect(lock.packages[`node_modules/${dep}`]?.dev, `package-lock.json: ${dep} not marked dev`).toBe(true);
    }
    // Workspace packages are never marked dev: the images keep only each service's production closure.
    for (const name of SERVICE_NAMES) {
      const out = execFileSync("node", [join(ROOT, "tools", "scripts", "production-workspaces.mjs"), `@ragtune/${name}-service`], { cwd: ROOT, encoding: "utf8" });
      const closure = out.trim().split("\n").map((line) => line.split(" ")[0]);
      expect(closure[0]).toBe(`@ragtune/${name}-service`);
      expect(closure, name).toContain("@ragtune/rpc");
      for (const dep of TEST_ONLY_NPM) expect(closure, name).not.toContain(dep);
    }
    for (const name of ["node-service", "trainer"]) {
      const text = dockerInstructions(join(DEPLOY, "docker", `${name}.Dockerfile`)).join("\n");
      expect(text, `${name}: dist/ of the production closure only`).toMatch(/production-workspaces\.mjs .*> \/tmp\/workspaces/);
      expect(text, `${name}: workspace links outside the closure removed`).toMatch(/node_modules\/@ragtune\/\*.*rm -rf/);
    }
  });

  it("the trainer image: CUDA torch from the index of the base image's CUDA version, checked in the build, no test tools", () => {
    const text = dockerInstructions(join(DEPLOY, "docker", "trainer.Dockerfile")).join("\n");
    const arg = (name: string) => new RegExp(`^ARG ${name}=(.*)$`, "m").exec(text)?.[1]?.replace(/^"|"$/g, "");
    const base = arg("BASE_IMAGE");
    const cuda = arg("TORCH_CUDA");
    expect(base).toMatch(/^nvidia\/cuda:\d+\.\d+\.\d+-base-/); // the slim base: torch's wheels bring the CUDA libraries
    expect(base!.split(":")[1]!.startsWith(`${cuda}.`), `${base} is CUDA ${cuda}`).toBe(true);
    expect(arg("TORCH_INDEX_URL")).toBe(`https://download.pytorch.org/whl/cu${cuda!.replace(".", "")}`);
    expect(text).toMatch(/torch\.version\.cuda/);
    expect(text).toContain('"${TORCH_CUDA}"');
    const testOnly = (arg("TEST_ONLY_PACKAGES") ?? "").split(/\s+/);
    expect(testOnly).toEqual(expect.arrayContaining(["pytest", "ruff"]));
    const requirements = readFileSync(join(ROOT, "services", "trainer", "worker", "requirements.txt"), "utf8");
    for (const pkg of testOnly) expect(requirements, `requirements.txt pins ${pkg}`).toMatch(new RegExp(`^${pkg}==`, "im"));
    // The GPU check installs the same CUDA torch and bitsandbytes as the image.
    const gpuCheck = readFileSync(join(ROOT, "tools", "bench", "gpu-check.sh"), "utf8");
    expect(gpuCheck).toContain(`TORCH_INDEX_URL:-${arg("TORCH_INDEX_URL")}}`);
    expect(gpuCheck).toContain(`TORCH_CUDA:-${cuda}}`);
    expect(gpuCheck).toContain(`BITSANDBYTES_VERSION=${arg("BITSANDBYTES_VERSION")}\n`);
    // The README states the driver the image needs.
    expect(readFileSync(join(DEPLOY, "README.md"), "utf8")).toMatch(/driver (version )?≥ ?570|driver >= 570/);
  });

  it("the trainer image holds the hyperparameter contract where the service (dist/) and the worker read it", () => {
    // Both read it at the same repository-relative path: the worker from its package, the service from
    // services/trainer/dist/../worker/ragtune_worker. So a COPY must keep that relative path under WORKDIR /app.
    const instructions = dockerInstructions(join(DEPLOY, "docker", "trainer.Dockerfile"));
    const runtime = instructions.slice(instructions.findIndex((i) => /^FROM\s.*\sAS\s+runtime$/i.test(i)));
    expect(runtime.some((i) => /^WORKDIR\s+\/app$/.test(i))).toBe(true);
    const copies = runtime.flatMap((i) => {
      const words = (/^COPY\s+(.*)$/i.exec(i)?.[1] ?? "").split(/\s+/).filter(Boolean);
      if (words.length < 2 || words.some((w) => w.startsWith("--from="))) return [];
      const paths = words.filter((w) => !w.startsWith("--")).map((w) => w.replace(/^\.\//, "").replace(/\/$/, ""));
      const dest = paths.at(-1)!;
      return paths.slice(0, -1).map((src) => ({ src, dest }));
    });
    const holder = copies.find(({ src }) => HYPERPARAMETER_CONTRACT === src || HYPERPARAMETER_CONTRACT.startsWith(`${src}/`));
    expect(holder, `a COPY of ${HYPERPARAMETER_CONTRACT} into the runtime image`).toBeDefined();
    expect(holder!.dest).toBe(holder!.src);
    expect(dockerIgnore(join(DEPLOY, "docker", "trainer.Dockerfile.dockerignore"))(HYPERPARAMETER_CONTRACT)).toBe(false);
    expect(existsSync(join(ROOT, HYPERPARAMETER_CONTRACT))).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------------------
// The GPU check: on a machine without a usable GPU it stops before installing anything.

describe("tools/bench/gpu-check.sh", () => {
  const script = join(ROOT, "tools", "bench", "gpu-check.sh");
  const run = (env: Record<string, string>) => {
    const r = spawnSync("bash", [script], { env: { ...process.env, ...env }, encoding: "utf8", timeout: 60_000 });
    return { status: r.status, stderr: r.stderr, stdout: r.stdout };
  };
  const fake = (body: string) => {
    const dir = mkdtempSync(join(tmpdir(), "gpu-check-"));
    const bin = join(dir, "nvidia-smi");
    writeFileSync(bin, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return bin;
  };

  it("without nvidia-smi: exit 2, says no NVIDIA GPU and that nothing was installed", () => {
    const r = run({ NVIDIA_SMI: "/nonexistent/nvidia-smi" });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/no NVIDIA GPU here.*nothing was installed/);
    expect(r.stdout).not.toContain("installing");
  });

  it("with a driver that cannot talk to a GPU: exit 2 with the reason", () => {
    const r = run({ NVIDIA_SMI: fake('echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver" >&2; exit 9') });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/no usable GPU.*nothing was installed/);
  });

  it("with a driver older than CUDA 12.8 needs: exit 2 naming the driver", () => {
    const r = run({ NVIDIA_SMI: fake('echo "NVIDIA L4, 535.104.05, 23034 MiB"') });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/driver 535\.104\.05 is older than 570/);
  });
});
