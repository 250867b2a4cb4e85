// The WebGPU backend: runs the compiler's plan.json (docs/plan.md) on the visitor's GPU. The browser
// twin of monologue_compile/backends/wgpu_executor.py; nothing model-specific lives here.
//
// Everything is built once in create(): the device (with only the limits and features the manifest
// names), every buffer (weights written straight from the verified shard bytes), the shader modules,
// pipelines and bind groups. A step then writes the token ids and the 16-byte `step` uniform,
// encodes its whole dispatch list in one compute pass, copies its result to a mappable buffer and
// submits once. Greedy decoding reads back one id from the GPU argmax; sampling reads back the top-k
// (or, when the visitor's top-k is off or wider than the plan's, the logits row) and picks on the
// host with a port of runtime_rs/src/sampler.rs, so a seed gives the same text as on the wasm path.
//
// The tokenizer is runtime.wasm's (the same code the CPU path uses). A lost device rejects the step
// in progress with DeviceLostError; generate.js then continues the reply on the CPU.

import { DeviceLostError, RUNTIME_WASM, webgpuRequirements } from "./engine.js";
import { instantiate, WasmTokenizer } from "./wasm_runtime.js";

export function probe(manifest, files) {
  const webgpu = manifest.webgpu ?? {};
  if (!webgpu.plan) return { ok: false, reason: `the compiler made no GPU program for this model${webgpu.reason ? `: ${webgpu.reason}` : ""}` };
  if (!files.has(webgpu.plan)) return { ok: false, reason: `${webgpu.plan} is not listed in the manifest` };
  if (!files.has(RUNTIME_WASM)) return { ok: false, reason: "the tokenizer is in runtime.wasm, which this site does not list" };
  return { ok: true, reason: "the WebGPU adapter has what the model needs" };
}

const utf8 = new TextDecoder();

export async function create({ manifest, files, onProgress = () => {} }) {
  const plan = JSON.parse(utf8.decode(files.get(manifest.webgpu.plan)));
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) throw new Error("no WebGPU adapter");
  const { limits, features } = webgpuRequirements(manifest);
  // Only what the plan needs: asking for more could fail on a device that runs the plan fine.
  const device = await adapter.requestDevice({ requiredLimits: limits, requiredFeatures: features });
  const profile = cpuAdapter(adapter.info) ? "cpu" : null;
  const rt = await instantiate(files.get(RUNTIME_WASM));
  let tokenizer = null;
  try {
    tokenizer = new WasmTokenizer(rt, files.get(manifest.tokenizer), manifest);
    const executor = new PlanExecutor(device, plan, files, profile);
    await executor.compile(onProgress);
    return new WebGPUEngine(executor, tokenizer);
  } catch (error) {
    tokenizer?.free();
    device.destroy();
    throw error;
  }
}

// A CPU implementation of WebGPU (SwiftShader; lavapipe/llvmpipe under other browsers) runs the plan's
// `cpu` profile: kernels without workgroup barriers, which such adapters run slowly.
function cpuAdapter(info) {
  return Boolean(info?.isFallbackAdapter) || /swiftshader|llvmpipe|lavapipe/i.test(`${info?.vendor} ${info?.architecture} ${info?.device} ${info?.description}`);
}

class PlanExecutor {
  constructor(device, plan, files, profile = null) {
    this.device = device;
    this.plan = plan;
    this.files = files;
    // The dispatch lists this adapter runs: the profile's lists replace the plan's default ones.
    this.profile = profile;
    this.lists = { ...plan.dispatch, ...(plan.profiles?.[profile]?.dispatch ?? {}) };
    this.vocab = plan.vocab_size;
    this.pos = 0;
    // Rejects with DeviceLostError once the device is gone; every readback races it, so a step never
    // waits forever on a dead GPU. (Never resolves otherwise.)
    this.lost = device.lost.then((info) => {
      throw new DeviceLostError(`the GPU device was lost (${info.reason || "unknown"})${info.message ? `: ${info.message}` : ""}`);
    });
    this.lost.catch(() => {});
    // An error the GPU reports later (a step the device refused) would otherwise only show as wrong
    // tokens: the next readback fails with it instead.
    this.failure = null;
    device.addEventListener("uncapturederror", (event) => {
      this.failure ??= new Error(`the GPU refused a step: ${event.error.message}`);
    });
    device.pushErrorScope("validation");
    device.pushErrorScope("out-of-memory");
    this.buffers = new Map(plan.buffers.map((b) => [b.name, this.createBuffer(b)]));
    const io = plan.io;
    this.idsBuffer = this.buffers.get(io.ids);
    this.stepBuffer = this.buffers.get(plan.uniforms.step.buffer);
    const readable = (bytes) => device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    // One mappable buffer per kind of result; a step waits for the previous one's readback, so
    // none is ever mapped twice.
    this.readback = {
      row: readable(4 * this.vocab),
      argmax: readable(8),
      topk: readable(8 * io.topk.k),
    };
  }

  createBuffer(b) {
    const usage = b.usage.reduce((acc, name) => acc | GPUBufferUsage[name], 0);
    if (!b.init) return this.device.createBuffer({ size: b.bytes, usage, label: b.name });
    // Weights go from the shard bytes into the buffer's mapped memory: no staging copy.
    const buffer = this.device.createBuffer({ size: b.bytes, usage, label: b.name, mappedAtCreation: true });
    const bytes = new Uint8Array(buffer.getMappedRange());
    for (const { shard, offset, nbytes, dst_offset: at } of b.init.chunks) {
      const data = this.files.get(shard);
      if (!data || offset + nbytes > data.length) throw new Error(`plan.json: ${b.name} reads past the end of ${shard}`);
      bytes.set(data.subarray(offset, offset + nbytes), at);
    }
    buffer.unmap();
    return buffer;
  }

  // Shader modules and pipelines (compiled concurrently; onProgress counts the pipelines ready),
  // then bind groups and the dispatch lists; only those the profile's lists use.
  async compile(onProgress) {
    const { device, plan } = this;
    const usedGroups = [...new Set(Object.values(this.lists).flat().map((d) => d.bind_group))];
    const used = [...new Set(usedGroups.map((i) => plan.bind_groups[i].pipeline))];
    const modules = new Map();
    for (const p of used.map((i) => plan.pipelines[i])) {
      if (!modules.has(p.kernel)) {
        const source = this.files.get(p.kernel);
        if (!source) throw new Error(`plan.json names ${p.kernel}, which the manifest does not list`);
        modules.set(p.kernel, device.createShaderModule({ code: utf8.decode(source), label: p.kernel }));
      }
    }
    this.files = null; // the buffers hold the weights now: let the shard bytes go
    let done = 0;
    onProgress({ loaded: 0, total: used.length });
    this.pipelines = [];
    await Promise.all(used.map(async (i) => {
      const p = plan.pipelines[i];
      const layout = device.createBindGroupLayout({
        entries: p.bindings.map((b) => ({ binding: b.binding, visibility: GPUShaderStage.COMPUTE, buffer: { type: b.type } })),
      });
      let pipeline;
      try {
        pipeline = await device.createComputePipelineAsync({
          layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
          compute: { module: modules.get(p.kernel), entryPoint: p.entry_point },
          label: p.name,
        });
      } catch (error) {
        throw new Error(`${p.kernel} did not compile: ${await compilerMessages(modules.get(p.kernel), error)}`);
      }
      onProgress({ loaded: ++done, total: used.length });
      this.pipelines[i] = { pipeline, layout };
    }));
    const bindGroups = [];
    for (const i of usedGroups) {
      const bg = plan.bind_groups[i];
      bindGroups[i] = device.createBindGroup({
        layout: this.pipelines[bg.pipeline].layout,
        entries: bg.entries.map((name, j) => ({ binding: j, resource: { buffer: this.buffers.get(name) } })),
      });
    }
    this.dispatch = {};
    for (const [name, list] of Object.entries(this.lists)) {
      this.dispatch[name] = list.map((d) => ({ pipeline: this.pipelines[d.pipeline].pipeline, bindGroup: bindGroups[d.bind_group], workgroups: d.workgroups }));
    }
    // Anything invalid above (a limit the plan exceeds, a bad binding) shows here, once, rather
    // than as silently wrong tokens later.
    const errors = [await device.popErrorScope(), await device.popErrorScope()].filter(Boolean);
    if (errors.length) throw new Error(`the GPU refused the model's program: ${errors.map((e) => e.message).join("; ")}`);
  }

  // One step of ids.length tokens at this.pos: one command buffer with the dispatch lists, then
  // copies of `bytes` bytes from each [buffer name, source offset, destination offset] of `from`
  // into the readback buffer `into`; resolves to the bytes copied.
  submit(ids, lists, from, bytes, into) {
    const { device } = this;
    if (this.pos + ids.length > this.plan.max_seq) throw new Error(`the model reads at most ${this.plan.max_seq} tokens`);
    device.queue.writeBuffer(this.idsBuffer, 0, Uint32Array.from(ids));
    device.queue.writeBuffer(this.stepBuffer, 0, new Uint32Array([this.pos, ids.length, 0, 0]));
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    for (const list of lists) {
      for (const d of this.dispatch[list]) {
        pass.setPipeline(d.pipeline);
        pass.setBindGroup(0, d.bindGroup);
        pass.dispatchWorkgroups(...d.workgroups);
      }
    }
    pass.end();
    for (const [name, offset, dst] of from) encoder.copyBufferToBuffer(this.buffers.get(name), offset, into, dst, bytes);
    device.queue.submit([encoder.finish()]);
    this.pos += ids.length;
    return this.read(into, Math.max(...from.map(([, , dst]) => dst + bytes)));
  }

  async read(buffer, bytes) {
    try {
      await Promise.race([buffer.mapAsync(GPUMapMode.READ, 0, bytes), this.lost]);
    } catch (error) {
      // A destroyed device may abort the map before device.lost settles: give it a moment to say so.
      const lost = await Promise.race([this.lost.catch((e) => e), new Promise((done) => setTimeout(done, 1000))]);
      throw lost instanceof DeviceLostError ? lost : error;
    }
    const copy = buffer.getMappedRange(0, bytes).slice(0);
    buffer.unmap();
    if (this.failure) throw this.failure;
    return copy;
  }

  // Prefill in chunks of plan.chunk; resolves to the logits row of the last id.
  async prefill(ids) {
    const rowBytes = 4 * this.vocab;
    let last = null;
    for (let i = 0; i < ids.length; i += this.plan.chunk) {
      const part = ids.slice(i, i + this.plan.chunk);
      // The prefill kernels take 2..chunk tokens; a lone token is a decode step.
      const list = part.length === 1 ? "decode" : "prefill";
      last = this.submit(part, [list], [[this.plan.io.logits.buffer, (part.length - 1) * rowBytes, 0]], rowBytes, this.readback.row);
      if (i + this.plan.chunk < ids.length) await last; // one chunk in flight: the readback buffer is shared
    }
    return new Float32Array(await last);
  }

  // One decode step of `id`; resolves to what the sampler needs: {id} (GPU argmax), {values, ids}
  // (top-k), or {row} (the logits).
  decode(id, mode) {
    const io = this.plan.io;
    if (mode === "argmax") {
      return this.submit([id], ["decode", "argmax"], [[io.argmax.buffer, 0, 0]], 8, this.readback.argmax)
        .then((bytes) => ({ id: new Uint32Array(bytes)[0] }));
    }
    if (mode === "topk") {
      const k = io.topk.k;
      return this.submit([id], ["decode", "topk"], [[io.topk.values, 0, 0], [io.topk.ids, 0, 4 * k]], 4 * k, this.readback.topk)
        .then((bytes) => ({ values: new Float32Array(bytes, 0, k), ids: new Uint32Array(bytes, 4 * k, k) }));
    }
    return this.submit([id], ["decode"], [[io.logits.buffer, 0, 0]], 4 * this.vocab, this.readback.row)
      .then((bytes) => ({ row: new Float32Array(bytes) }));
  }

  destroy() {
    this.device.destroy();
  }
}

async function compilerMessages(module, error) {
  const info = await module.getCompilationInfo();
  const lines = info.messages.filter((m) => m.type === "error").map((m) => `line ${m.lineNum}: ${m.message}`);
  return lines.length ? lines.join("; ") : error.message;
}

class WebGPUEngine {
  constructor(executor, tokenizer) {
    this.backend = "webgpu";
    this.tokenizer = tokenizer;
    this.executor = executor;
    this.sampling = null;
    // The next token's distribution (a promise of decode()'s result): step() takes a token from it
    // and submits that token's decode step before returning, so the GPU computes the next
    // distribution while the page shows this token.
    this.pending = null;
    this.inFlight = null;
  }

  reset(sampling = {}) {
    this.sampling = { temperature: 0, topK: 0, topP: 1, seed: 0, ...sampling };
    this.rng = new SplitMix64(this.sampling.seed >>> 0);
    this.executor.pos = 0; // the caches need no clearing: attention reads only positions below pos
    // The decode step a stopped (or finished) reply left in flight still owns a readback buffer.
    this.inFlight = this.pending?.catch(() => {});
    this.pending = null;
  }

  async prefill(ids) {
    await this.inFlight;
    if (this.pending) await this.pending; // a readback still in flight shares the buffers
    const row = this.executor.prefill(ids).then((r) => ({ row: r }));
    this.pending = row;
    await row;
  }

  async step() {
    if (!this.pending) throw new Error("step() before prefill()");
    const result = await this.pending;
    const id = this.pick(result);
    this.pending = null;
    if (this.executor.pos < this.executor.plan.max_seq) {
      this.pending = this.executor.decode(id, this.mode());
      this.pending.catch(() => {}); // surfaced by the next step(), if there is one
    }
    return { id };
  }

  // What the next decode step reads back: the GPU's argmax for greedy decoding, the top-k when
  // the visitor's top-k fits in the plan's, else the whole logits row.
  mode() {
    const { temperature, topK } = this.sampling;
    if (!(temperature > 0)) return "argmax";
    return topK > 0 && topK <= this.executor.plan.io.topk.k ? "topk" : "row";
  }

  pick(result) {
    if (result.id !== undefined) return result.id;
    if (result.row) return sample(result.row, null, this.sampling, this.rng);
    return sample(result.values, result.ids, this.sampling, this.rng);
  }

  dispose() {
    this.pending = null;
    this.executor.destroy();
    this.tokenizer.free();
  }
}

// --- sampling: runtime_rs/src/sampler.rs in JS ---------------------------------------------------

// SplitMix64, as the Rust sampler's Rng: the same seed gives the same draws on either backend.
class SplitMix64 {
  constructor(seed) {
    this.state = BigInt(seed);
  }

  nextF64() {
    const mask = (1n << 64n) - 1n;
    this.state = (this.state + 0x9e3779b97f4a7c15n) & mask;
    let z = this.state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & mask;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & mask;
    z ^= z >> 31n;
    return Number(z >> 11n) / 2 ** 53;
  }
}

// The next token from logits `values` (ids[i] is values[i]'s token; null: the index is the id), as
// sampler.rs picks it: greedy at temperature 0, else temperature, top-k (keeping ties with the
// k-th), top-p (a token is dropped once those ranked before it cover top_p), one uniform draw.
// Given the top-k rather than the whole row, the choice is the same whenever the visitor's top-k
// is at most the plan's k.
function sample(values, ids, sampling, rng) {
  // The Rust sampler holds temperature and top_p as f32.
  const temperature = Math.fround(sampling.temperature);
  const topP = Math.fround(sampling.topP);
  const topK = sampling.topK;
  const idOf = (i) => (ids ? ids[i] : i);
  const x = Array.from(values, (v) => (Number.isNaN(v) ? -Infinity : v));
  if (!(temperature > 0)) {
    let best = 0;
    for (let i = 1; i < x.length; i++) if (x[i] > x[best] || (x[i] === x[best] && idOf(i) < idOf(best))) best = i;
    return idOf(best);
  }
  for (let i = 0; i < x.length; i++) x[i] /= temperature;
  const order = x.map((_, i) => i).sort((a, b) => x[b] - x[a] || idOf(a) - idOf(b));
  let keep = order.length;
  if (topK > 0 && topK < keep) {
    const kth = x[order[topK - 1]];
    keep = 0;
    while (keep < order.length && x[order[keep]] >= kth) keep++;
  }
  const max = x[order[0]];
  let p = order.slice(0, keep).map((i) => Math.exp(x[i] - max));
  if (topP > 0 && topP < 1) {
    const total = p.reduce((a, b) => a + b, 0);
    let before = 0;
    let n = 0;
    for (const pi of p) {
      if (before / total >= topP) break;
      before += pi;
      n++;
    }
    p = p.slice(0, Math.max(n, 1));
  }
  let u = rng.nextF64() * p.reduce((a, b) => a + b, 0);
  for (let j = 0; j < p.length; j++) {
    if (u < p[j]) return idOf(order[j]);
    u -= p[j];
  }
  return idOf(order[p.length - 1]);
}
