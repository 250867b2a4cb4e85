// Downloads the model files a site's manifest lists, checks each against its sha256, and keeps them
// in the Cache API so the next visit starts without downloading.
//
// Cache entries are keyed by the file's sha256 (not only its URL), so a recompiled model whose file
// changed is fetched again, and entries of files no longer in the manifest are deleted. Downloads
// bypass the HTTP cache: the Cache API copy is the one kept, and a stale HTTP copy of a changed file
// could only fail its hash check.

const CACHE_NAME = "monologue-model";
const MANIFEST_FORMAT = "monologue-model";
const MANIFEST_VERSION = 1;
const PARALLEL_DOWNLOADS = 4;
const PROGRESS_INTERVAL_MS = 100;

// kind: "insecure" | "manifest" | "missing" (the server has no such file: the site is incomplete) |
// "network" | "corrupt"; file: the manifest path at fault, if any.
export class LoadError extends Error {
  constructor(kind, message, file = null) {
    super(message);
    this.name = "LoadError";
    this.kind = kind;
    this.file = file;
  }
}

// siteURL: the URL of the folder holding index.html and model/ (ends with "/").
// onProgress({stage: "download" | "verify", file, loaded, total, fromCache}): loaded/total are bytes
// over all files, so one bar covers the whole download.
// Returns {manifest, files: Map(manifest path -> Uint8Array), stats: {count, bytes, fromCache,
// warnings}}; the map's keys are the manifest's own paths, relative to model/.
export async function loadModel(siteURL, onProgress) {
  if (!globalThis.crypto?.subtle) {
    throw new LoadError(
      "insecure",
      "This page must be opened over https:// or from localhost: only there can the browser verify the model files.",
    );
  }
  const manifestURL = new URL("model/manifest.json", siteURL);
  const manifest = await fetchManifest(manifestURL);
  const entries = manifestFiles(manifest, manifestURL, siteURL);
  const total = entries.reduce((sum, e) => sum + e.bytes, 0);
  const cache = await openCache();
  const stats = { count: entries.length, bytes: total, fromCache: 0, warnings: [] };
  if (!cache) stats.warnings.push("This browser keeps no cache for this page, so the model will be downloaded again on the next visit.");

  // The first failure ends the whole load: other downloads are cancelled and fall silent, so no
  // progress report can follow the error.
  const stop = new AbortController();
  let loaded = 0;
  let lastReport = 0;
  const report = (stage, entry, force, fromCache = false) => {
    if (stop.signal.aborted) return;
    const now = performance.now();
    if (!force && now - lastReport < PROGRESS_INTERVAL_MS) return;
    lastReport = now;
    onProgress({ stage, file: entry.name, loaded, total, fromCache });
  };

  let caching = Boolean(cache);
  const files = new Map();
  const loadOne = async (entry) => {
    let data = cache ? await readCached(cache, entry) : null;
    const fromCache = data !== null;
    if (fromCache) {
      loaded += entry.bytes;
      report("download", entry, false, true);
    } else {
      data = await download(entry, stop.signal, (n) => {
        loaded += n;
        report("download", entry, false);
      });
    }
    report("verify", entry, true, fromCache);
    if ((await sha256Hex(data)) !== entry.sha256) {
      if (fromCache) {
        // The stored copy went bad; the server's copy may still be good.
        await cache.delete(entry.cacheKey);
        loaded -= entry.bytes;
        return loadOne({ ...entry, skipCache: true });
      }
      throw new LoadError(
        "corrupt",
        `${entry.name} is corrupt: its sha256 does not match the manifest. Nothing was run.`,
        entry.name,
      );
    }
    if (fromCache) stats.fromCache += 1;
    else if (caching) {
      try {
        await cache.put(entry.cacheKey, new Response(data, { headers: { "Content-Type": "application/octet-stream" } }));
      } catch (e) {
        // Keeping a copy is a convenience: failing to is worth a note, not worth stopping for.
        caching = false;
        stats.warnings.push(
          e.name === "QuotaExceededError"
            ? `Storage is full: the model (${formatBytes(total)}) does not fit in this browser's storage for this site, ` +
                "so it will be downloaded again on the next visit. Free some space to keep it."
            : `The model could not be kept on this device (${e.message || e.name}), so it will be downloaded again on the next visit.`,
        );
      }
    }
    files.set(entry.path, data);
  };

  try {
    await runPool(entries, PARALLEL_DOWNLOADS, stop.signal, loadOne);
  } catch (error) {
    stop.abort();
    throw error;
  }
  if (cache) await pruneCache(cache, siteURL, entries);
  onProgress({ stage: "verify", file: null, loaded: total, total, fromCache: false });
  return { manifest, files, stats };
}

async function fetchManifest(url) {
  let response;
  try {
    // no-store, not no-cache: a revalidation by If-Modified-Since (one-second granularity) gets a
    // 304 for a manifest rewritten within the second, and the page would run the old hashes
    response = await fetch(url, { cache: "no-store" });
  } catch {
    throw new LoadError("network", "Could not download model/manifest.json: the connection failed.", "model/manifest.json");
  }
  if (!response.ok) {
    throw new LoadError(
      "manifest",
      `Could not download model/manifest.json (HTTP ${response.status}): is this a compiled Monologue site?`,
      "model/manifest.json",
    );
  }
  try {
    return await response.json();
  } catch {
    throw new LoadError("manifest", "model/manifest.json is not valid JSON.", "model/manifest.json");
  }
}

// Checks each entry and returns those the page needs. Paths are relative to model/ (where manifest.json is) and must stay inside the
// site: a manifest must not be able to make the page fetch from anywhere else. Files are named by
// their path from the site's root ("model/weights-00.bin") in progress and errors.
function manifestFiles(manifest, manifestURL, siteURL) {
  if (manifest?.format !== MANIFEST_FORMAT || manifest.version !== MANIFEST_VERSION) {
    throw new LoadError(
      "manifest",
      `model/manifest.json is not a version-${MANIFEST_VERSION} ${MANIFEST_FORMAT} manifest (docs/formats.md), which is what this page reads.`,
      "model/manifest.json",
    );
  }
  if (!Array.isArray(manifest.files)) {
    throw new LoadError("manifest", 'model/manifest.json has no "files" list.', "model/manifest.json");
  }
  const entries = manifest.files.map((file, i) => {
    const { path, bytes, sha256 } = file ?? {};
    const bad = (what) => new LoadError("manifest", `model/manifest.json: files[${i}] ${what}.`, "model/manifest.json");
    const url = typeof path === "string" && path && !/^([a-z][a-z0-9+.-]*:|[/\\])/i.test(path) ? new URL(path, manifestURL) : null;
    if (!url || !url.href.startsWith(siteURL) || url.search || url.hash) {
      throw bad(`has an invalid "path" (${JSON.stringify(path)}): it must name a file of this site, relative to model/`);
    }
    const name = url.href.slice(siteURL.length);
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw bad(`(${name}) has an invalid "bytes"`);
    if (typeof sha256 !== "string" || !/^[0-9a-f]{64}$/.test(sha256)) throw bad(`(${name}) has an invalid "sha256"`);
    return { path, name, bytes, sha256, url, cacheKey: `${url.href}?sha256=${sha256}`, page: file.page !== false };
  });
  // Files for the tools only (the IR: "page": false) are checked like the others but not downloaded.
  return entries.filter((entry) => entry.page);
}

async function openCache() {
  try {
    return globalThis.caches ? await caches.open(CACHE_NAME) : null;
  } catch {
    return null; // e.g. storage disabled by the browser's privacy settings
  }
}

async function readCached(cache, entry) {
  if (entry.skipCache) return null;
  const hit = await cache.match(entry.cacheKey);
  return hit ? new Uint8Array(await hit.arrayBuffer()) : null;
}

async function download(entry, signal, onBytes) {
  let response;
  try {
    response = await fetch(entry.url, { cache: "no-store", signal });
  } catch {
    throw new LoadError("network", `Could not download ${entry.name}: the connection failed.`, entry.name);
  }
  if (response.status === 404 || response.status === 410) {
    throw new LoadError("missing", `${entry.name} is missing from this site (HTTP ${response.status}), although its manifest lists it.`, entry.name);
  }
  if (!response.ok) {
    throw new LoadError("network", `Could not download ${entry.name} (HTTP ${response.status}).`, entry.name);
  }
  // Read into a buffer of the size the manifest promises, reporting progress per chunk.
  const data = new Uint8Array(entry.bytes);
  let at = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (at + value.length > data.length) {
      await reader.cancel();
      throw new LoadError("corrupt", `${entry.name} is corrupt: it is larger than the ${entry.bytes} bytes the manifest says. Nothing was run.`, entry.name);
    }
    data.set(value, at);
    at += value.length;
    onBytes(value.length);
  }
  if (at !== data.length) {
    throw new LoadError("corrupt", `${entry.name} is corrupt: it has ${at} bytes, the manifest says ${entry.bytes}. Nothing was run.`, entry.name);
  }
  return data;
}

async function sha256Hex(data) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Deletes this site's cached files that the current manifest no longer lists.
async function pruneCache(cache, siteURL, entries) {
  const keep = new Set(entries.map((e) => e.cacheKey));
  for (const request of await cache.keys()) {
    if (request.url.startsWith(siteURL) && !keep.has(request.url)) await cache.delete(request);
  }
}

// Runs work(item) for every item, `width` at a time, until done or the signal aborts.
async function runPool(items, width, signal, work) {
  let next = 0;
  const lane = async () => {
    while (next < items.length && !signal.aborted) await work(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, lane));
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}
