import { readdir, realpath, stat } from "node:fs/promises";
import { isAbsolute, join, relative, resolve, sep } from "node:path";
import { DocumentErrorReason, type ServerPath } from "@ragtune/proto";
import { detectMediaType } from "@ragtune/text";

/** A file found under a server path, or the reason a path was refused. */
export type ResolvedServerFile =
  | { ok: true; sourceName: string; absolutePath: string }
  | { ok: false; sourceName: string; reason: DocumentErrorReason; message: string };

/** True when `path` is `root` or lies below it (both absolute, normalized). */
export function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel) && rel.split(sep)[0] !== "..");
}

function toSourceName(root: string, path: string): string {
  return relative(root, path).split(sep).join("/");
}

/**
 * Expands one requested server path into the files to ingest, in path order. A path that resolves
 * (symlinks included) outside `allowedRoot` is refused without reading it; a directory yields its
 * files with a supported (or the requested) extension, recursively unless `recursive` is false.
 */
export async function resolveServerPath(allowedRoot: string | undefined, request: ServerPath): Promise<ResolvedServerFile[]> {
  const requested = request.path;
  if (allowedRoot === undefined) {
    return [
      {
        ok: false,
        sourceName: requested,
        reason: DocumentErrorReason.PATH_OUTSIDE_ROOT,
        message: `server path "${requested}" refused: server-side paths are disabled on this server (INGEST_ALLOWED_ROOT is not set); send the document inline`,
      },
    ];
  }
  const outside = (name: string): ResolvedServerFile => ({
    ok: false,
    sourceName: name,
    reason: DocumentErrorReason.PATH_OUTSIDE_ROOT,
    message: `server path "${name}" refused: it resolves outside the allowed root ${allowedRoot}; use a path under that directory`,
  });
  const notFound = (name: string, why: string): ResolvedServerFile => ({
    ok: false,
    sourceName: name,
    reason: DocumentErrorReason.PATH_NOT_FOUND,
    message: `server path "${name}" ${why}`,
  });

  const root = await realpath(allowedRoot);
  const lexical = resolve(allowedRoot, requested);
  if (requested.trim() === "" || !isInside(resolve(allowedRoot), lexical)) return [outside(requested)];
  let real: string;
  try {
    real = await realpath(lexical);
  } catch {
    return [notFound(requested, "does not exist under the allowed root")];
  }
  if (!isInside(root, real)) return [outside(requested)];

  const info = await stat(real);
  if (info.isFile()) return [{ ok: true, sourceName: toSourceName(root, real), absolutePath: real }];
  if (!info.isDirectory()) return [notFound(requested, "is neither a file nor a directory")];

  const extensions = request.extensions.map((e) => (e.startsWith(".") ? e : `.${e}`).toLowerCase());
  const wanted = (name: string) =>
    extensions.length > 0 ? extensions.some((e) => name.toLowerCase().endsWith(e)) : detectMediaType(name) !== undefined;
  const recursive = request.recursive ?? true;
  const out: ResolvedServerFile[] = [];

  const walk = async (dir: string): Promise<void> => {
    const entries = (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      const path = join(dir, entry.name);
      if (entry.isSymbolicLink()) {
        let target: string;
        try {
          target = await realpath(path);
        } catch {
          if (wanted(entry.name)) out.push(notFound(toSourceName(root, path), "is a broken symbolic link"));
          continue;
        }
        if (!isInside(root, target)) {
          if (wanted(entry.name)) out.push(outside(toSourceName(root, path)));
          continue;
        }
        const targetInfo = await stat(target);
        if (targetInfo.isFile() && wanted(entry.name)) out.push({ ok: true, sourceName: toSourceName(root, path), absolutePath: target });
        // Symlinked directories are not followed (no cycles).
        continue;
      }
      if (entry.isDirectory()) {
        if (recursive) await walk(path);
      } else if (entry.isFile() && wanted(entry.name)) {
        out.push({ ok: true, sourceName: toSourceName(root, path), absolutePath: path });
      }
    }
  };
  await walk(real);
  return out;
}
